"""One real Ray Serve instance per test session, serving the session's trained champion.

Ports are picked free at start, outside Ray's worker port range (10002-19999) and each
instance's replica range, so a developer's `make run` on :8000/:8080 is left alone. Every
request goes to 127.0.0.1.

The instance stops right after the last test that uses it, not at the end of the session: its
users are all in the service tier, and an idle Ray Serve (controller loop, replicas, metrics
reported every second) left running would take CPU from every stack test after them.

Every test that uses `serving_api` runs twice, once per serving engine (ONNX Runtime, then the
scikit-learn pipeline): the fixture is parametrized per session, so pytest groups the tests by
engine and the one instance switches engine once, in place (a `reconfigure` of the replicas).
A module whose tests are about something else than the engine names the one it needs in
`SERVING_ENGINES`.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import requests

REPLICAS = 2
# The load's threads run at this niceness: they stand in for clients on other machines, so on
# these 2 cores they must not take CPU from the server they measure (a replacement replica
# starting under load, the serving replicas). At nice 0, with the suite's other lane busy
# beside it, a killed replica's replacement took over 30 s in CI (10.7 s alone).
CLIENT_NICENESS = 10
# The session's Ray instance (every process it starts, replicas and their replacements
# included) runs at this niceness when the suite runs as root, as CI does: it stands in for an
# API host, which has its cores to itself, while here it shares 2 cores with the suite's other
# lane (hosts in network namespaces, image builds, Ansible). At that lane's priority, a killed
# replica's replacement took over 30 s in CI (issue 3's bound; 10.7 s on an idle machine,
# 16-20 s beside three busy processes). Not root: the processes' own priority, unchanged.
SERVING_NICENESS = -5

HTTP_REQUEST_TIMEOUT_S = 3
ENGINES = ("onnx", "sklearn")
# How close each engine's probabilities are to the pipeline's own: the scikit-learn engine runs
# the pipeline itself; ONNX Runtime computes in float32, within selected_model's parity tolerance.
PROBABILITY_TOLERANCE = {"sklearn": 1e-9, "onnx": 1e-4}

_last_user: str | None = None  # node ID of the last test (in run order) that uses serving_api
_release = None  # stops the instance; set while it runs


@pytest.hookimpl(trylast=True)  # after conftest.py has put the tests in their run order
def pytest_collection_modifyitems(config, items):
    global _last_user
    users = [item.nodeid for item in items if "serving_instance" in getattr(item, "fixturenames", ())]
    _last_user = users[-1] if users else None


@pytest.hookimpl(trylast=True)  # after the test's own fixtures are torn down
def pytest_runtest_teardown(item, nextitem):
    global _release
    if item.nodeid == _last_user and _release is not None:
        release, _release = _release, None
        release()


@pytest.hookimpl(tryfirst=True)  # before pytest turns parametrize marks and fixture params into calls
def pytest_generate_tests(metafunc):
    """A test module may name the engines its tests need (`SERVING_ENGINES`); else both. As a
    mark, which takes precedence over the fixture's own params."""
    engines = getattr(metafunc.module, "SERVING_ENGINES", None)
    if engines and "serving_api" in metafunc.fixturenames:
        metafunc.definition.add_marker(pytest.mark.parametrize("serving_api", engines, indirect=True, scope="session"))


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, low: int = 20100, high: int = 29900) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(low, high)
        if port not in ports and _free(port):
            ports.append(port)
    return ports


@contextmanager
def started_at_priority(niceness: int):
    """Processes started from this thread inside the block run at `niceness` (Linux keeps a
    niceness per thread, and a child inherits its parent thread's). Only as root: lowering it
    needs the privilege."""
    if os.geteuid() != 0:
        yield
        return
    thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, niceness)
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, thread, before)


@dataclass
class ServingApi:
    resource: object  # RayServe
    url: str
    metrics_url: str
    features: list[str]
    model_name: str
    tracking_uri: str
    versions: list[str] = field(default_factory=list)
    engine: str = "onnx"  # the engine the replicas use now (the `serving_api` parameter)

    def predict(self, instances, timeout: float = 30) -> requests.Response:
        return requests.post(f"{self.url}/predict", json={"instances": instances}, timeout=timeout)


@pytest.fixture(scope="session", params=ENGINES)
def serving_api(request, serving_instance):
    """The session's API serving the latest deployed version with this engine."""
    api = serving_instance
    if api.engine != request.param:
        deployment = api.resource.deploy(f"models:/{api.model_name}/{api.versions[-1]}", api.versions[-1],
                                         tracking_uri=api.tracking_uri, engine=request.param)
        assert deployment.action in ("reconfigured", "deployed"), deployment.action
        api.engine = request.param
    ready = requests.get(f"{api.url}/readyz", timeout=30).json()
    assert ready["engine"] == request.param, ready
    return api


@pytest.fixture(scope="session")
def serving_instance(trained_home):
    from mlops_assets.resources.ray_serve import RayServe

    settings = trained_home["settings"]
    selected = trained_home["selected"]
    api_port, metrics_port, gcs_port, client_port, hap_metrics, hap_stats, fallback = free_ports(7)
    replica_low = random.randrange(32000, 38000, 100)
    resource = RayServe(
        state_dir=str(trained_home["home"] / "serving"),
        api_port=api_port,
        metrics_port=metrics_port,
        gcs_port=gcs_port,
        client_port=client_port,
        haproxy_metrics_port=hap_metrics,
        haproxy_stats_port=hap_stats,
        fallback_proxy_port=fallback,
        replica_port_min=replica_low,
        replica_port_max=replica_low + 99,
        num_replicas=REPLICAS,
        metrics_report_interval_ms=1000,
        # Short enough for the timeout tests to wait for (test_serving_hardening.py).
        timeout_http_request_s=HTTP_REQUEST_TIMEOUT_S,
    )
    global _release
    try:
        _release = resource.shutdown
        with started_at_priority(SERVING_NICENESS):
            resource.deploy(selected.model_uri, selected.version, tracking_uri=settings.tracking_uri, engine=ENGINES[0])
        yield ServingApi(
            resource=resource,
            url=resource.api_url,
            metrics_url=resource.metrics_url,
            features=list(selected.features),
            model_name=selected.name,
            tracking_uri=settings.tracking_uri,
            versions=[selected.version],
            engine=ENGINES[0],
        )
    finally:
        if _release is not None:  # not stopped after its last user already
            _release = None
            resource.shutdown()  # and its folders in /tmp


@pytest.fixture(scope="session")
def test_split(trained_home):
    """The session dataset's test split (features frame, labels)."""
    from mlops_assets.ml.data import SplitSpec, build_dataset

    data = build_dataset("palmerpenguins", "species", SplitSpec())
    return data.xy("test")


def as_instances(frame) -> list[dict]:
    import math

    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


class Load:
    """Closed-loop load from `workers` threads until stopped: counts answers by outcome."""

    def __init__(self, url: str, body: dict, workers: int = 8) -> None:
        self.url, self.body, self.workers = url, body, workers
        self.statuses: dict[str, int] = {}
        self.versions: dict[str, int] = {}
        self.nodes: dict[str, int] = {}  # a Ray cluster's: the X-Served-By of each answer
        self.samples: list[str] = []  # the first failures, as "STATUS body" (what an assertion shows)
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _count(self, outcome: str, version: str | None = None, node: str | None = None, detail: str = "") -> None:
        with self._lock:
            self.statuses[outcome] = self.statuses.get(outcome, 0) + 1
            if outcome != "200" and len(self.samples) < 10:
                self.samples.append(f"{time.monotonic() - self.started:.1f}s {outcome} {detail[:400]}")
            if version:
                self.versions[version] = self.versions.get(version, 0) + 1
            if node:
                self.nodes[node] = self.nodes.get(node, 0) + 1

    def _run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CLIENT_NICENESS)
        session = requests.Session()
        while not self._stop.is_set():
            try:
                response = session.post(self.url, json=self.body, timeout=30)
                version = response.json()["model"]["version"] if response.status_code == 200 else None
                detail = "" if response.status_code == 200 else f"{response.text[:160]!r} {dict(response.headers)}"
                self._count(str(response.status_code), version, response.headers.get("x-served-by"), detail)
            except Exception as exc:  # a failed request is what the tests count
                self._count(type(exc).__name__, detail=str(exc))
                session = requests.Session()

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.total - self.statuses.get("200", 0)

    def snapshot(self) -> tuple[int, int, dict[str, int]]:
        """(answers, failed, answers by node) so far: a window's counts are two snapshots' difference."""
        with self._lock:
            return self.total, self.failed, dict(self.nodes)


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition", last=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"; last: {last()}" if last else ""))


def served_by_nodes(base_url: str, body: dict, count: int = 10) -> set[str]:
    """The nodes (the X-Served-By header of a Ray cluster's node) of the replicas that answered
    `count` predictions of `body` through `base_url`."""
    nodes = set()
    for _ in range(count):
        answer = requests.post(f"{base_url}/predict", json=body, timeout=30)
        assert answer.status_code == 200, answer.text[:500]
        nodes.add(answer.headers["x-served-by"])
    return nodes


def replicas_on(hosts, name: str, address: str) -> int:
    """The Serve replicas running on one node of a cluster of test hosts (a `TestHosts`): the
    replica series in that node's Ray exporter (behind the host's metrics port), asked from
    inside the host."""
    text = hosts.exec(name, f"curl -s --max-time 10 http://{address}:8080/metrics").stdout
    return len({line.split('replica="', 1)[1].split('"', 1)[0] for line in text.splitlines()
                if line.startswith("ray_serve_replica_processing_queries{") and 'replica="' in line})


def container_run(hosts, name: str) -> str:
    """The API container's process, restart count and start time on a test host (a
    `TestHosts`): unchanged means not restarted."""
    return hosts.exec(name, "docker inspect -f '{{.State.Pid}} {{.RestartCount}} {{.State.StartedAt}}' mlops-api").stdout.strip()


def load_window(load, seconds: float) -> tuple[int, int, dict, float]:
    """Answers, failures and answers by node during the next `seconds` of `load`, and its rate."""
    before = load.snapshot()
    time.sleep(seconds)
    after = load.snapshot()
    nodes = {node: count - before[2].get(node, 0) for node, count in after[2].items() if count - before[2].get(node, 0)}
    return after[0] - before[0], after[1] - before[1], nodes, round((after[0] - before[0]) / seconds, 1)
