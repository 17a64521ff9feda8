"""The API image's entrypoint as a two-node Ray cluster (MLOPS_RAY_ROLE=head / worker), each
node in a network namespace this test creates on a private bridge (no route out), the
entrypoint run from the project's venv as the container runs it. Token authentication on; the
application deployed once by the head; a proxy on every node; one replica per node; losing the
worker under load loses (almost) no request."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mlops_assets.rehearsal.hosts import free_subnet
from mlops_assets.serving import model as model_lib
from mlops_assets.settings import PROJECT_ROOT

from .serving_fixtures import Load, as_instances, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.root]


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check)


class Namespaces:
    """Two network namespaces joined by a bridge that this test owns; the test runner reaches
    them on the bridge's address. No default route: nothing leaves the test subnet."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.subnet = free_subnet()
        hosts = list(self.subnet.hosts())
        self.bridge, self.bridge_ip = f"mlcbr{tag}", str(hosts[0])
        self.nodes = {"head": (f"mlc-h-{tag}", str(hosts[1]), f"mlch{tag}"),
                      "worker": (f"mlc-w-{tag}", str(hosts[2]), f"mlcw{tag}")}

    def __enter__(self) -> "Namespaces":
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for namespace, address, veth in self.nodes.values():
            _run("ip", "netns", "add", namespace)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _run("ip", "link", "set", veth, "master", self.bridge, "up")
            _run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", namespace, "link", "set", "eth0", "up")
            _run("ip", "-n", namespace, "link", "set", "lo", "up")
        return self

    def kill(self, role: str) -> None:
        """Every process in the node's namespace, at once (the host lost)."""
        pids = _run("ip", "netns", "pids", self.nodes[role][0], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass

    def __exit__(self, *exc) -> None:
        for role, (namespace, _, veth) in self.nodes.items():
            self.kill(role)
            _run("ip", "netns", "del", namespace, check=False)
            _run("ip", "link", "del", veth, check=False)
        _run("ip", "link", "del", self.bridge, check=False)


@pytest.fixture(scope="module")
def model_folder(trained_home, tmp_path_factory):
    selected = trained_home["selected"]
    folder, _, _ = model_lib.download(model_lib.ModelSource(selected.model_uri, tracking_uri=trained_home["settings"].tracking_uri),
                                      tmp_path_factory.mktemp("model"))
    return folder


def _node(namespaces: Namespaces, role: str, model_folder: Path, token: Path, state: Path) -> subprocess.Popen:
    namespace, address, _ = namespaces.nodes[role]
    env = {
        "PATH": os.environ["PATH"], "HOME": str(state), "PYTHONPATH": str(PROJECT_ROOT),
        "MLOPS_MODEL_DIR": str(model_folder),
        model_lib.MANIFEST_ENV: model_lib.manifest_text(model_lib.files_manifest(model_folder)),
        "MLOPS_RAY_ROLE": role, "MLOPS_RAY_NODE_IP": address,
        "MLOPS_RAY_HEAD_ADDRESS": namespaces.nodes["head"][1],
        "RAY_AUTH_TOKEN_PATH": str(token),
        "MLOPS_STATE_DIR": str(state / role[0]), "MLOPS_NUM_CPUS": "1",
        "MLOPS_AUTOSCALING": "min=2,max=2,target=2",
    }
    log = open(state / f"{role}.log", "w")
    return subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-m", "mlops_assets.serving.container"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def _cluster_nodes(namespaces: Namespaces, token: Path, env_token: bool = True) -> subprocess.CompletedProcess:
    """The addresses of the cluster's live nodes, asked from the head's namespace as a Ray
    driver of the cluster (with or without the token)."""
    namespace, address, _ = namespaces.nodes["head"]
    script = (
        "import json, ray\n"
        f"ray.init(address='{address}:6379', logging_level='ERROR', log_to_driver=False)\n"
        "print(json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))\n"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(PROJECT_ROOT), "RAY_AUTH_MODE": "token",
           **({"RAY_AUTH_TOKEN_PATH": str(token)} if env_token else {})}
    return subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=120)


def test_two_api_hosts_form_one_cluster_and_losing_the_worker_loses_no_request(model_folder, test_split, tmp_path):
    token = tmp_path / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o400)
    state = Path(f"/tmp/mlc-{secrets.token_hex(3)}")  # short: Ray's socket paths
    state.mkdir(mode=0o700)
    body = {"instances": as_instances(test_split[0].head(3))}
    timings = {}
    with Namespaces() as namespaces:
        head_ip, worker_ip = namespaces.nodes["head"][1], namespaces.nodes["worker"][1]
        started = time.monotonic()
        head = _node(namespaces, "head", model_folder, token, state)
        worker = _node(namespaces, "worker", model_folder, token, state)
        try:
            def ready(ip):
                try:
                    return requests.get(f"http://{ip}:8000/readyz", timeout=3).status_code == 200
                except requests.RequestException:
                    return False

            for ip in (head_ip, worker_ip):
                wait_for(lambda: ready(ip), 240, 1, f"/readyz on {ip}",
                         last=lambda: (state / "head.log").read_text()[-2000:] + (state / "worker.log").read_text()[-1000:])
            timings["both nodes ready (s)"] = round(time.monotonic() - started, 1)

            # Two nodes in one cluster; through either node's port, replicas on both answer.
            nodes = _cluster_nodes(namespaces, token)
            assert nodes.returncode == 0, nodes.stderr[-2000:]
            assert json.loads(nodes.stdout.strip().splitlines()[-1]) == sorted([head_ip, worker_ip])
            def served_by(ip) -> dict:
                served = {}
                for _ in range(20):
                    answer = requests.post(f"http://{ip}:8000/predict", json=body, timeout=30)
                    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 3, answer.text
                    served[answer.headers["x-served-by"]] = served.get(answer.headers["x-served-by"], 0) + 1
                return served

            # The second replica may still be starting when both proxies answer: wait for it.
            wait_for(lambda: set(served_by(head_ip)) == {head_ip, worker_ip}, 120, 1, "replicas on both nodes",
                     last=lambda: served_by(head_ip))
            timings["replicas on both nodes (s)"] = round(time.monotonic() - started, 1)
            # Through either host, replicas on both nodes answer.
            for ip in (head_ip, worker_ip):
                assert set(served_by(ip)) == {head_ip, worker_ip}, ip
            # Without the token the cluster refuses a client.
            refused = _cluster_nodes(namespaces, token, env_token=False)
            assert refused.returncode != 0 and "token" in (refused.stderr + refused.stdout).lower(), refused.stderr[-1500:]

            # The worker host lost under load through the head: at most 1% of requests fail.
            with Load(f"http://{head_ip}:8000/predict", body, workers=4) as load:
                time.sleep(5)
                before = load.total
                namespaces.kill("worker")
                killed = time.monotonic()
                time.sleep(15)
            timings["requests / failed around the worker's loss"] = (load.total, load.failed)
            assert before > 0 and load.failed <= load.total * 0.01, load.statuses
            assert requests.post(f"http://{head_ip}:8000/predict", json=body, timeout=30).status_code == 200
            timings["served on after the loss (s)"] = round(time.monotonic() - killed, 1)
            print(f"\n[cluster timings] {json.dumps(timings)}")
        finally:
            for process in (worker, head):
                process.terminate()
            for process in (worker, head):
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    subprocess.run(["rm", "-rf", str(state)], check=False)
