"""The prediction API under change and failure: a champion switch and a killed replica, each
under concurrent requests (real Ray Serve, real HTTP on 127.0.0.1)."""

import os
import re
import signal
import time
from pathlib import Path

import pytest
import requests

from .serving_fixtures import REPLICAS, SERVING_NICENESS, Load, as_instances, wait_for

pytestmark = pytest.mark.service


@pytest.fixture
def body(test_split):
    return {"instances": as_instances(test_split[0].head(1))}


def _new_champion_version(serving_api) -> str:
    """Register the champion's model again as a new version and move the alias to it: the
    same signature, another version, which is what a retraining that wins looks like here."""
    from mlflow import MlflowClient

    from mlops_assets.resources.mlflow_registry import MANIFEST_TAG
    from mlops_assets.serving.onnx_engine import ENGINE_TAG

    client = MlflowClient(tracking_uri=serving_api.tracking_uri, registry_uri=serving_api.tracking_uri)
    current = client.get_model_version_by_alias(serving_api.model_name, "champion")
    # The same files, so the same manifest (what `selected_model` copies onto a version it
    # registers), and the engine the API uses now (what its parity check records).
    created = client.create_model_version(serving_api.model_name, current.source, run_id=current.run_id,
                                          tags={MANIFEST_TAG: current.tags[MANIFEST_TAG], ENGINE_TAG: serving_api.engine})
    client.set_registered_model_alias(serving_api.model_name, "champion", created.version)
    return str(created.version)


def test_champion_switch_under_load_fails_no_request(serving_api, body):
    version = _new_champion_version(serving_api)
    with Load(f"{serving_api.url}/predict", body, workers=8) as load:
        time.sleep(2)
        # Replicas resolve this one through MLflow themselves (the fixture deployed a folder).
        deployment = serving_api.resource.deploy(
            f"models:/{serving_api.model_name}/{version}", version, tracking_uri=serving_api.tracking_uri,
            transport="registry", engine=serving_api.engine,
        )
        time.sleep(2)
    serving_api.versions.append(version)
    assert deployment.action == "reconfigured"  # in place: no replica restarted
    assert load.total > 50
    assert load.failed == 0, load.statuses
    assert set(load.versions) == {serving_api.versions[-2], version}, load.versions
    answers = {serving_api.predict(body["instances"]).json()["model"]["version"] for _ in range(10)}
    assert answers == {version}


def _replica_pids(serving_api) -> list[int]:
    from mlops_assets.serving.runtime import _processes, instance_processes

    table = _processes()
    mine = set(instance_processes(serving_api.resource.runtime()))
    return [pid for pid, (_, cmd) in table.items() if pid in mine and cmd.startswith("ray::ServeReplica")]


def _backend_ports(serving_api) -> set[int]:
    """The replica ports haproxy sends requests to, from its current config."""
    configs = sorted(serving_api.resource.runtime().haproxy_dir.rglob("haproxy.cfg"), key=lambda p: p.stat().st_mtime)
    text = configs[-1].read_text() if configs else ""
    return {int(port) for port in re.findall(r"^\s*server\s+SERVE_REPLICA\S+\s+127\.0\.0\.1:(\d+)", text, flags=re.M)}


def _health(serving_api) -> dict:
    """What full health is made of, each part as found now: the replica processes, the replica
    ports in HAProxy's config, and each of those ports' `/readyz` status."""
    ports = sorted(_backend_ports(serving_api))
    ready = {}
    for port in ports:
        try:
            ready[port] = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
        except requests.RequestException as exc:
            ready[port] = type(exc).__name__
    return {"replica processes": len(_replica_pids(serving_api)), "haproxy backends": ports, "readyz": ready}


def _fully_healthy(serving_api) -> bool:
    state = _health(serving_api)
    return (state["replica processes"] == REPLICAS and len(state["haproxy backends"]) == REPLICAS
            and all(status == 200 for status in state["readyz"].values()))


def test_the_replicas_run_at_the_priority_of_the_hosts_other_services(serving_api):
    """Ray would start them at nice 15, below the raylet that starts them: behind any busy
    process beside them (a build, a backup), a replacement replica then took over 30 s to start
    (RAY_worker_niceness, runtime.py). They run at their Ray instance's own priority: its
    raylet's (0, or SERVING_NICENESS when the suite runs as root, serving_fixtures.py)."""
    from mlops_assets.serving.runtime import _processes, instance_processes

    table = _processes()
    mine = set(instance_processes(serving_api.resource.runtime()))
    raylets = [pid for pid in mine if "/raylet " in table[pid][1] or table[pid][1].split(" ", 1)[0].endswith("/raylet")]
    assert len(raylets) == 1, [table[pid][1][:120] for pid in mine]
    expected = os.getpriority(os.PRIO_PROCESS, raylets[0])
    assert expected == (SERVING_NICENESS if os.geteuid() == 0 else 0)
    pids = _replica_pids(serving_api)
    assert len(pids) == REPLICAS
    assert {pid: os.getpriority(os.PRIO_PROCESS, pid) for pid in pids} == {pid: expected for pid in pids}


def test_killed_replica_under_load(serving_api, body):
    wait_for(lambda: _fully_healthy(serving_api), timeout=60, what="two healthy replicas before the kill")
    victim = _replica_pids(serving_api)[0]
    with Load(f"{serving_api.url}/predict", body, workers=8) as load:
        time.sleep(3)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(1)
        wait_for(lambda: _fully_healthy(serving_api), timeout=30, interval=0.5, what="a replacement replica",
                 last=lambda: {**_health(serving_api), "Serve's status": serving_api.resource.app_status()})
        healthy_after = time.monotonic() - killed_at
        time.sleep(2)
    assert not Path(f"/proc/{victim}").exists()
    assert load.total > 200, load.statuses
    assert load.failed / load.total <= 0.005, f"{load.failed} of {load.total} failed: {load.statuses}"
    assert healthy_after <= 30
    print(f"replica killed: {load.failed}/{load.total} failed, fully healthy again after {healthy_after:.1f}s")
