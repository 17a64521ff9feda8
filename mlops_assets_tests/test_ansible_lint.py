"""ansible_roles/ passes ansible-lint (production profile, offline: Galaxy is unreachable) and
every playbook passes Ansible's own syntax check."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_assets.settings import PROJECT_ROOT

pytestmark = pytest.mark.service

ROLES = PROJECT_ROOT / "ansible_roles"
BIN = Path(sys.executable).parent


def _env(tmp_path):
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "ANSIBLE_HOME": str(tmp_path / "ansible"),
            "ANSIBLE_ROLES_PATH": str(ROLES), "NO_COLOR": "1", "ANSIBLE_LINT_SKIP_VERSION_CHECK": "1"}


@pytest.mark.timeout(300)
def test_ansible_lint_passes(tmp_path):
    result = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--nocolor"], cwd=ROLES, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "profile 'production' was required, and it passed" in (result.stdout + result.stderr).lower()


@pytest.mark.parametrize("playbook", ["site.yml", "tests/docker.yml", "tests/api.yml", "tests/prometheus.yml", "tests/alertmanager.yml",
                                      "tests/grafana.yml", "tests/node_exporter.yml", "tests/pushgateway.yml",
                                      "tests/tracking_server.yml", "tracking_backup.yml", "tracking_restore.yml"])
def test_playbook_syntax(playbook, tmp_path):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[api]\napi-host ansible_host=192.0.2.10\n[monitoring]\nmonitoring-host ansible_host=192.0.2.11\n")
    result = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", "-i", str(inventory), playbook],
                            cwd=ROLES, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_role_has_the_usual_layout_and_documents_its_defaults():
    import yaml

    for role in ("docker", "api", "prometheus", "alertmanager", "grafana", "node_exporter", "pushgateway", "image",
                 "tracking_server"):
        base = ROLES / role
        # `image` only gets an image onto a host for other roles: nothing to restart, no handlers.
        for part in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml", "README.md") + (("handlers/main.yml",) if role != "image" else ()):
            assert (base / part).is_file(), f"{role}: missing {part}"
        defaults = yaml.safe_load((base / "defaults/main.yml").read_text()) or {}
        readme = (base / "README.md").read_text()
        for name in defaults:
            assert name.startswith(f"{role}_"), f"{role}: default {name} is not prefixed with the role name"
            assert f"`{name}`" in readme, f"{role}: README's variable table misses {name}"
