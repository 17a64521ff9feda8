"""A whole local stack in a scratch checkout, driven like a user drives it: `python -m
mlops_assets.cli run` (what `make run` calls) against its own MLOPS_HOME, free loopback ports
(MLOPS_LOCAL_PORTS) and the machine's container engine. Used by the lazy-rebuild scenario
tests and by bench/whole_graph.py.

The checkout is a copy of the project's tracked files, so a scenario can edit the serving code
the way a developer would, without touching the real tree. Every process of the stack (Ray,
its replicas, Prometheus) runs from the copy: PYTHONPATH points there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlops_assets.settings import PROJECT_ROOT
from mlops_assets_tests.serving_fixtures import free_ports

ASSETS = ["dataset", "tracking_server", "candidate_models", "selected_model", "container_image", "tofu_state",
          "deployed_hosts", "deployed_api", "dashboards"]


def free_range(size: int = 200) -> tuple[int, int]:
    """A run of `size` ports where nothing listens now (for Serve's replicas)."""
    for low in range(33000, 60000, size):
        free = True
        for port in (low, low + size // 2, low + size - 1):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    free = False
                    break
        if free:
            return low, low + size - 1
    raise RuntimeError("no free port range for the replicas")


def free_local_ports() -> tuple[dict[str, int], str]:
    """Free loopback ports for every listener of the local target (settings.LOCAL_PORTS), and
    the MLOPS_LOCAL_PORTS value that puts them there."""
    from mlops_assets.settings import LOCAL_PORTS

    names = [name for name in LOCAL_PORTS if name != "replicas"]
    ports = dict(zip(names, free_ports(len(names))))
    low, high = free_range()
    return ports, ",".join(f"{k}={v}" for k, v in ports.items()) + f",replicas={low}-{high}"


def copy_checkout(dest: Path) -> Path:
    """The project's tracked files (git ls-files), copied to `dest`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def images_built_in(home: Path) -> set[str]:
    """Every image reference that `container_image` recorded in this state folder's Dagster
    instance: what a stack test built, and all it may remove (not "every mlops-api tag that
    appeared while the test ran", which would include images of anything else using the engine
    meanwhile)."""
    import dagster as dg

    refs: set[str] = set()
    dagster_home = Path(home) / "dagster"
    if not dagster_home.is_dir():
        return refs
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey("container_image"), limit=1000).records
        for record in records:
            metadata = record.asset_materialization.metadata if record.asset_materialization else {}
            ref = getattr(metadata.get("image"), "value", None)
            if ref and ref != "none":
                refs.add(str(ref))
    return refs


def remove_images(engine, refs: set[str]) -> None:
    """Remove these image references from the engine (the ones already gone are skipped)."""
    for ref in refs:
        try:
            engine.images.remove(ref, force=True)
        except Exception as exc:  # noqa: BLE001 - gone already, or still used by a container: say so
            if "no such image" not in str(exc).lower() and "not found" not in str(exc).lower():
                print(f"could not remove {ref}: {exc}")


def run_cli(args, cwd: Path, env: dict[str, str], log_dir: Path, timeout: float) -> tuple[int, str]:
    """`python -m mlops_assets.cli ARGS` with its output streamed to a numbered log file in
    `log_dir` (a hang can be followed live with `tail -f`); one still running after `timeout`
    is killed with its process group and returns -9. Returns (exit status, output)."""
    words = "-".join(str(a).strip("-").replace("/", "_") for a in args if not str(a).startswith("/"))
    log_path = Path(log_dir) / f"cli-{len(list(Path(log_dir).glob('cli-*.log'))):02d}-{words}.log"
    command = [sys.executable, "-m", "mlops_assets.cli", *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            log.write(f"\n[test] killed: `{' '.join(command[1:])}` was still running after {timeout:.0f} s\n")
    return process.returncode, log_path.read_text()


@dataclass
class CliRun:
    args: tuple[str, ...]
    returncode: int
    output: str
    seconds: float
    materialized: set[str] = field(default_factory=set)

    def tail(self, lines: int = 60) -> str:
        kept = [line for line in self.output.splitlines() if " - DEBUG - " not in line]
        return "\n".join(kept[-lines:])


class LocalStack:
    """One local-target stack: a checkout copy, a state folder, its ports."""

    def __init__(self, root: Path, docker_host: str | None = None, **env: str):
        self.root = Path(root)
        self.checkout = copy_checkout(self.root / "checkout")
        self.home = self.root / "home"
        self.ports, local_ports = free_local_ports()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "DAGSTER_", "PYTEST"))},
            "MLOPS_HOME": str(self.home),
            "DAGSTER_HOME": str(self.home / "dagster"),
            "MLOPS_TARGET": "local",
            "MLOPS_LOCAL_PORTS": local_ports,
            "PYTHONPATH": str(self.checkout),
            "PYTHONUNBUFFERED": "1",
            # The tests' interval (conftest.py); bench/whole_graph.py keeps the product's default.
            **({"MLOPS_SCRAPE_INTERVAL": os.environ["MLOPS_SCRAPE_INTERVAL"]} if "MLOPS_SCRAPE_INTERVAL" in os.environ else {}),
            **({"DOCKER_HOST": docker_host} if docker_host else {}),
            **env,
        }

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def cli(self, *args: str, timeout: float = 1200, **env: str) -> CliRun:
        """`python -m mlops_assets.cli ARGS` in the checkout; its output streamed to a log file."""
        before = self.latest_materializations()
        started = time.monotonic()
        returncode, output = run_cli(args, self.checkout, {**self.env, **env}, self.root, timeout)
        seconds = time.monotonic() - started
        after = self.latest_materializations()
        changed = {name for name, storage_id in after.items() if storage_id != before.get(name)}
        return CliRun(tuple(args), returncode, output, seconds, changed)

    def latest_materializations(self) -> dict[str, int]:
        """asset -> storage id of its latest materialization."""
        return {name: event.storage_id for name, event in self._latest_events().items()}

    def metadata(self, asset: str) -> dict:
        event = self._latest_events()[asset]
        return {k: v.value for k, v in event.event_log_entry.asset_materialization.metadata.items()}

    def _latest_events(self) -> dict:
        import dagster as dg

        if not (self.home / "dagster" / "storage").exists():
            return {}
        with dg.DagsterInstance.from_config(str(self.home / "dagster")) as instance:
            found = {}
            for name in ASSETS:
                records = instance.fetch_materializations(dg.AssetKey(name), limit=1).records
                if records:
                    found[name] = records[0]
            return found

    def replica_pids(self) -> set[int]:
        """The Serve replicas of this stack's Ray instance (new PIDs = the API restarted)."""
        from mlops_assets.serving.runtime import _processes, instance_processes

        runtime = self._ray_serve().runtime()
        table = _processes()
        return {pid for pid in instance_processes(runtime) if "ServeReplica" in table.get(pid, (0, ""))[1]}

    def _ray_serve(self):
        from mlops_assets.settings import load_settings
        from mlops_assets.targets import resources_for

        return resources_for(load_settings(self.env))["api_deployer"].ray_serve

    def down(self) -> CliRun:
        return self.cli("down", timeout=300)
