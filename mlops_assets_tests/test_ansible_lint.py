"""ansible_roles/ passes ansible-lint (production profile, offline: Galaxy is unreachable) and
every playbook passes Ansible's own syntax check; the prometheus role's template, rendered by
Ansible, passes promtool's."""

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
                                      "tests/tracking_server.yml", "tests/ray_gcs_store.yml", "tracking_backup.yml", "tracking_restore.yml", "api_drain.yml"])
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


@pytest.mark.parametrize("discovery", ["inventory", "ec2"])
def test_prometheus_template_finds_every_api_host_and_promtool_accepts_it(discovery, tmp_path):
    """The prometheus role's prometheus.yml for two API hosts (a Ray cluster): listed from the
    inventory (sim), or found by EC2 service discovery by tag (aws); rendered by Ansible on
    this machine (a local connection, no host contacted) and checked by promtool."""
    import yaml

    from mlops_assets.resources.prometheus import LocalPrometheus

    out = tmp_path / "prometheus.yml"
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "monitoring", "gather_facts": False,
        "vars_files": [str(ROLES / "prometheus/defaults/main.yml")],
        "tasks": [{"name": "Render", "ansible.builtin.template": {
            "src": str(ROLES / "prometheus/templates/prometheus.yml.j2"), "dest": str(out), "mode": "0600"}}],
    }]))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {
        "api": {"hosts": {"mlops-api": {"private_ip": "10.0.1.10"}, "mlops-api-2": {"private_ip": "10.0.2.10"}}},
        "monitoring": {"vars": {"aws_region": "eu-west-3", "project_name": "mlops-assets"},
                       "hosts": {"mlops-monitoring": {"ansible_connection": "local", "private_ip": "10.0.1.20"}}}}}}))
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook),
                             "-e", f"prometheus_api_discovery={discovery}", "-e", "prometheus_pushgateway_group=none",
                             "-e", f"ansible_python_interpreter={sys.executable}"],
                            cwd=ROLES, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job = next(j for j in yaml.safe_load(out.read_text())["scrape_configs"] if j["job_name"] == "mlops-api")
    if discovery == "inventory":
        assert job["static_configs"] == [{"targets": ["10.0.1.10:8080", "10.0.2.10:8080"]}]
        assert "ec2_sd_configs" not in job
    else:
        assert "static_configs" not in job
        [sd] = job["ec2_sd_configs"]
        assert sd["region"] == "eu-west-3" and sd["port"] == 8080
        assert {f["name"]: f["values"] for f in sd["filters"]} == {
            "tag:Role": ["api"], "tag:Project": ["mlops-assets"], "instance-state-name": ["running"]}
    assert "SUCCESS" in LocalPrometheus(state_dir=str(tmp_path / "promtool")).check_config(out)
