"""scripts/setup_prometheus.sh on this machine: Debian's `prometheus`, `prometheus-node-exporter`,
`prometheus-pushgateway` and `prometheus-alertmanager` services are left disabled and masked, so that no reboot starts
them (they would listen on every interface and take the local Prometheus's ports).

The services are first put back the way Debian's packages leave them (enabled: the
multi-user.target.wants and SysV S links, no mask), as on a machine set up by an earlier
version of the script; then the script runs for real and the links are read back."""

import os
import subprocess
from pathlib import Path

import pytest

from mlops_assets.settings import PROJECT_ROOT

pytestmark = [pytest.mark.service, pytest.mark.root]

SERVICES = ("prometheus", "prometheus-node-exporter", "prometheus-pushgateway", "prometheus-alertmanager")
SYSTEMD = Path("/etc/systemd/system")


def _units(name: str) -> tuple[Path, Path]:
    return SYSTEMD / f"{name}.service", SYSTEMD / "multi-user.target.wants" / f"{name}.service"


def _start_links(name: str) -> list[Path]:
    return sorted(Path("/etc").glob(f"rc[2-5].d/S??{name}"))


def _enable_as_debian_does(name: str) -> None:
    unit, wanted = _units(name)
    if unit.is_symlink() and os.readlink(unit) == "/dev/null":
        unit.unlink()
    shipped = Path(f"/lib/systemd/system/{name}.service")
    if shipped.exists() and not wanted.is_symlink():
        wanted.parent.mkdir(parents=True, exist_ok=True)
        wanted.symlink_to(shipped)
    if Path(f"/etc/init.d/{name}").exists():
        subprocess.run(["update-rc.d", name, "enable"], check=True, capture_output=True)


def test_debian_services_are_disabled_and_masked():
    for name in SERVICES:
        if not Path(f"/lib/systemd/system/{name}.service").exists():
            pytest.skip(f"Debian's {name} package is not installed here (the script installs it as root)")
        _enable_as_debian_does(name)
        assert _units(name)[1].is_symlink() and _start_links(name), f"{name} was not put back to enabled"

    run = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "setup_prometheus.sh")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in SERVICES:
        unit, wanted = _units(name)
        assert unit.is_symlink() and os.readlink(unit) == "/dev/null", f"{name}.service is not masked"
        assert not wanted.exists() and not wanted.is_symlink(), f"{name}.service is still wanted by multi-user.target"
        assert _start_links(name) == [], f"{name} still has SysV start links: {_start_links(name)}"
    assert "disabled and masked" in run.stdout

    # Already blocked: the next run does nothing and says nothing.
    again = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "setup_prometheus.sh")], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
