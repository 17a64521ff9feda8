"""The `api` role on two API hosts (tofu_state's inventory with api_instance_count = 2), the
Molecule way on two Debian 12 test hosts of the rehearsal harness over real SSH: the real API
image (container_image, built on this machine) on both, the first host the Ray head, the
second a worker joining it with the cluster's token, the head keeping the cluster's state in
Redis (Ray's GCS fault tolerance; Redis from Debian's package on a third host, as it would be
on the monitoring host); one replica at rest, one on each node under load (Serve's
autoscaling); each host answers on the API port with replicas of both nodes; a Ray client
without the cluster's token is refused; converged again, nothing changes. Then issue 15's faults on that cluster: the worker host's container stopped
and started under load, the head's replica killed under load, a third host joining and
leaving, the head's container down past Ray's default reconnect timeout.

The hosts' Docker comes with the harness's host layer (started as the `docker` role starts it
on these hosts); test_ansible_roles.py tests that role itself.
"""

import json
import secrets
import shlex
import time
from pathlib import Path

import pytest
import requests

from mlops_assets.resources.ansible import AnsibleError
# infra_tf's ray_ports defaults, as tofu_state's inventory carries them (the image's own copy).
from mlops_assets.serving.container import RAY_PORTS

from .ansible_helpers import ansible_for_test_hosts
from .serving_fixtures import Load, as_instances, container_run, load_window, replicas_on, served_by_nodes, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.root]



REPOSITORY = "localhost/mlops-api-cluster-test"
# The host of Redis, the store of the head's GCS state (on the monitoring host in a deployment).
STORE = "gcs-store"
# The first test's playbook variables (the image, the token), for the tests that follow it.
CONVERGED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def remove_test_images():
    """The API images this module built, gone at its end (the runtime stays: it is shared)."""
    yield
    from mlops_assets.rehearsal.engine import docker_client

    client = docker_client()
    for image in client.images.list(name=REPOSITORY):
        client.images.remove(image.id, force=True)


@pytest.fixture(scope="module")
def hosts():
    from mlops_assets.rehearsal.hosts import TestHosts, free_subnet

    subnet = free_subnet()
    # Not "api": a host named like its group would take the group's place in `hosts: api`.
    with TestHosts([("api-1", str(subnet[10])), ("api-2", str(subnet[11])), (STORE, str(subnet[20]))]) as test_hosts:
        for name in test_hosts.hosts:
            test_hosts.start_docker(name)
        yield test_hosts
    assert test_hosts.footprint() == [], f"teardown left {test_hosts.footprint()}"


@pytest.fixture(scope="module")
def ansible(hosts, tmp_path_factory):
    return ansible_for_test_hosts(hosts, tmp_path_factory.mktemp("ansible"))


@pytest.fixture(scope="module")
def gcs_store(hosts, ansible) -> dict:
    """The `ray_gcs_store` role on its own host (the monitoring host's part in a deployment):
    Redis from Debian's package (rehearsal/images.py, laid out like the official image),
    password-protected from a 0400 file, converged twice (nothing changes the second time).
    Returns the api role's store variables."""
    from mlops_assets.rehearsal.engine import docker_client
    from mlops_assets.rehearsal.images import build_redis_image, save_archive

    engine = docker_client()
    image = build_redis_image(engine)
    repository, tag = image.rsplit(":", 1)
    address, password = hosts.address(STORE), secrets.token_hex(24)
    inventory = {"all": {"vars": {"ansible_user": "admin"}, "children": {"monitoring": {
        "hosts": {STORE: {"ansible_host": address, "private_ip": address}}}}}}
    variables = {"ray_gcs_store_image_source": "archive", "ray_gcs_store_image_repository": repository,
                 "ray_gcs_store_image_tag": tag, "ray_gcs_store_image_archive": str(save_archive(engine, image))}
    with pytest.raises(AnsibleError) as refused:  # no password: refused before anything runs
        ansible.run_playbook(inventory, "tests/ray_gcs_store.yml", extra_vars=variables)
    assert "failed at task 'Check the store's password'" in str(refused.value)
    variables["ray_gcs_store_password"] = password
    ansible.run_playbook(inventory, "tests/ray_gcs_store.yml", extra_vars=variables)
    again = ansible.run_playbook(inventory, "tests/ray_gcs_store.yml", extra_vars=variables)
    assert again.per_host[STORE]["changed"] == 0, again.per_host
    assert hosts.exec(STORE, "stat -c '%u %a' /etc/mlops-assets/ray-gcs-store/redis.conf").stdout.split() == ["999", "400"]
    assert password not in hosts.exec(STORE, "docker inspect ray-gcs-store").stdout
    # Redis answers only with the password (its protocol over a plain socket from an API host;
    # QUIT closes the connection after the answers).
    def redis(commands: str) -> str:
        script = f"exec 3<>/dev/tcp/{address}/6379; printf '{commands}QUIT\\r\\n' >&3; timeout 5 cat <&3"
        return hosts.exec("api-1", f"bash -c {shlex.quote(script)}", check=False).stdout

    assert redis("PING\\r\\n").startswith("-NOAUTH")
    assert redis(f"AUTH {password}\\r\\nPING\\r\\n").split() == ["+OK", "+PONG", "+OK"]
    return {"api_ray_gcs_store": f"{address}:6379", "api_ray_gcs_store_password": password}


def _inventory(hosts, names: list[str]) -> dict:
    """tofu_state's inventory shape for these test hosts: the first of `names` the Ray head."""
    head = hosts.address(names[0])
    return {"all": {"vars": {"ansible_user": "admin", "api_port": 8000, "metrics_port": 8080}, "children": {"api": {
        "vars": {"ray_head_address": head, "ray_ports": RAY_PORTS},
        "hosts": {name: {"ansible_host": hosts.address(name), "private_ip": hosts.address(name),
                         "ray_role": "head" if name == names[0] else "worker"} for name in names}}}}}


def _engine():
    """The image builder of these tests. The runtime under the sim pipeline's name (shared with
    the rehearsal, not rebuilt), qualified: a short name is tagged docker.io/library/NAME, which
    the hosts' Docker loads as NAME (what the role then does not find)."""
    from mlops_assets.image.context import DEFAULT_REPOSITORY, RUNTIME_SUFFIX
    from mlops_assets.offline_base import BASE_IMAGE
    from mlops_assets.resources.container_engine import ContainerEngine
    from mlops_assets.settings import load_settings

    return ContainerEngine(repository=REPOSITORY, runtime_repository=f"localhost/{DEFAULT_REPOSITORY}{RUNTIME_SUFFIX}",
                           base_image=BASE_IMAGE, required=True, save_archive=True,
                           images_dir=str(load_settings().home / "images"))


def test_api_role_forms_one_ray_cluster_across_two_api_hosts(hosts, ansible, gcs_store, trained_home, test_split):
    from mlops_assets.resources.api_deployer import archive_image_name

    from .image_helpers import materialize_container_image

    timings = {}
    started = time.monotonic()
    image = materialize_container_image(trained_home, _engine()).output_for_node("container_image")
    timings["image (s)"] = round(time.monotonic() - started, 1)
    assert image.archive and image.runtime_archive, image

    head, worker = hosts.address("api-1"), hosts.address("api-2")
    inventory = _inventory(hosts, ["api-1", "api-2"])
    repository, tag = archive_image_name(image.archive).rsplit(":", 1)
    variables = {"api_image_repository": repository, "api_image_tag": tag, "api_image_source": "archive",
                 "api_image_archive": image.archive, "api_runtime_image": archive_image_name(image.runtime_archive),
                 "api_runtime_archive": image.runtime_archive, "api_model_version": str(image.model_version),
                 "api_ready_timeout": 240,
                 # min 1 is raised to one replica per API host (Serve's proxy runs only where one is).
                 "api_autoscaling_min": 1, "api_autoscaling_max": 2, "api_autoscaling_target": 1,
                 **gcs_store}
    token = secrets.token_hex(32)
    with pytest.raises(AnsibleError) as failure:  # a cluster without its token: refused before anything runs
        ansible.run_playbook(inventory, "tests/api.yml", extra_vars=variables)
    assert "failed at task 'Check the cluster's variables'" in str(failure.value)
    assert hosts.exec("api-1", "docker ps -aq").stdout.strip() == ""
    variables["api_ray_token"] = token
    started = time.monotonic()
    ansible.run_playbook(inventory, "tests/api.yml", extra_vars=variables)
    timings["converge, both hosts (s)"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    again = ansible.run_playbook(inventory, "tests/api.yml", extra_vars=variables)
    timings["converge again (s)"] = round(time.monotonic() - started, 1)
    CONVERGED["variables"] = variables
    assert {host: counts["changed"] for host, counts in again.per_host.items() if counts["changed"]} == {}

    # The token: a 0400 file of the container's user, mounted read-only; never in the
    # container's configuration nor on a command line.
    for name in ("api-1", "api-2"):
        assert hosts.exec(name, "stat -c '%u %a' /etc/mlops-assets/ray-token/token").stdout.split() == ["10001", "400"]
        config = json.loads(hosts.exec(name, "docker inspect mlops-api").stdout)[0]
        assert token not in json.dumps(config) and token not in hosts.exec(name, "ps -eo args").stdout
        assert config["HostConfig"]["NetworkMode"] == "host" and config["HostConfig"]["ReadonlyRootfs"] is True
        assert ("/etc/mlops-assets/ray-token", "/run/secrets/ray-token", False) in [
            (m["Source"], m["Destination"], m["RW"]) for m in config["Mounts"]]
        role = "head" if name == "api-1" else "worker"
        assert f"MLOPS_RAY_ROLE={role}" in config["Config"]["Env"]
        assert any(e.startswith("MLOPS_AUTOSCALING_FILE=") for e in config["Config"]["Env"]) == (role == "head")
        # The GCS store: every node waits 300 s for a restarting head; only the head names Redis,
        # and its password is a 0400 file there, in no container's configuration.
        assert "RAY_gcs_rpc_server_reconnect_timeout_s=300" in config["Config"]["Env"]
        assert (f"RAY_REDIS_ADDRESS={gcs_store['api_ray_gcs_store']}" in config["Config"]["Env"]) == (role == "head")
        assert gcs_store["api_ray_gcs_store_password"] not in json.dumps(config)
    assert hosts.exec("api-1", "stat -c '%u %a' /etc/mlops-assets/ray-gcs-store/password").stdout.split() == ["10001", "400"]
    assert hosts.exec("api-2", "test -e /etc/mlops-assets/ray-gcs-store", check=False).returncode != 0
    assert hosts.exec("api-1", "cat /etc/mlops-assets/serve/autoscaling").stdout == "min=2,max=2,target=1,per_node=1\n"

    # Each host answers ready with the version, and predictions come from replicas on both nodes.
    body = {"instances": as_instances(test_split[0].head(3))}
    for address in (head, worker):
        ready = json.loads(hosts.exec("api-1", f"curl -s http://{address}:8000/readyz").stdout)
        assert ready["model"]["version"] == str(image.model_version), ready
    started, served = time.monotonic(), {}
    while time.monotonic() - started < 120:
        served = {address: served_by_nodes(f"http://{address}:8000", body) for address in (head, worker)}
        if all(nodes == {head, worker} for nodes in served.values()):
            break
        time.sleep(2)
    timings["replicas on both nodes after the converge (s)"] = round(time.monotonic() - started, 1)
    assert all(nodes == {head, worker} for nodes in served.values()), served
    assert [replicas_on(hosts, name, hosts.address(name)) for name in ("api-1", "api-2")] == [1, 1]

    # A Ray client with the cluster's token (the head container's own file) sees both nodes;
    # one with another token is refused by the cluster.
    member = _ray_client(hosts, head)
    assert member.returncode == 0 and json.loads(member.stdout.strip().splitlines()[-1]) == sorted([head, worker]), \
        member.stderr[-2000:]
    stranger = _ray_client(hosts, head, token=secrets.token_hex(32))
    assert stranger.returncode != 0, stranger.stdout[-1000:]
    assert "token" in (stranger.stderr + stranger.stdout).lower() and head not in stranger.stdout, stranger.stderr[-1500:]
    print(f"\n[api cluster role] {json.dumps(timings)}")


def _ray_client(hosts, head: str, token: str | None = None):
    """A Ray driver run in the head's container (its Ray), token authentication on (the
    entrypoint sets it for its own processes only), with the container's token file or, given
    `token`, that token instead (RAY_AUTH_TOKEN comes first), asking for the live nodes."""
    script = ("import json, ray\n"
              f"ray.init(address='{head}:6379', logging_level='ERROR', log_to_driver=False)\n"
              "print(json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))\n")
    flags = "-e RAY_AUTH_MODE=token " + (f"-e RAY_AUTH_TOKEN={token} " if token else "")
    return hosts.exec("api-1", f"docker exec -i {flags}mlops-api python -", check=False, timeout=120, input=script)


def test_the_cluster_serves_through_the_loss_of_a_worker_host_and_of_a_replica(hosts, test_split):
    """Issue 15's faults on the cluster the previous test converged (two replicas, one per
    node): the worker host's container stopped under steady load against the
    head's port, then started again; the head's replica process killed under load. Also
    measures what the capacity model in docs/performance.md rests on."""
    head, worker = hosts.address("api-1"), hosts.address("api-2")
    body = {"instances": as_instances(test_split[0].head(3))}
    figures = {}
    # The hop to a replica on the other node, against a replica on the node that took the
    # request: sequential predictions through the head's port, split by the node that served.
    latencies: dict[str, list] = {head: [], worker: []}
    session = requests.Session()
    while min(len(v) for v in latencies.values()) < 100 and sum(len(v) for v in latencies.values()) < 1000:
        started = time.perf_counter()
        answer = session.post(f"http://{head}:8000/predict", json=body, timeout=30)
        assert answer.status_code == 200, answer.text[:300]
        latencies[answer.headers["x-served-by"]].append((time.perf_counter() - started) * 1000)
    for node, label in ((head, "local replica"), (worker, "replica on the other node")):
        values = sorted(latencies[node])
        assert len(values) >= 100, {n: len(v) for n, v in latencies.items()}
        figures[f"{label}: p50 / p99 ms"] = (round(values[len(values) // 2], 2), round(values[int(len(values) * 0.99)], 2))
    for name in ("api-1", "api-2"):
        figures[f"memory of {name}'s container"] = hosts.exec(name, "docker stats --no-stream --format '{{.MemUsage}}' mlops-api").stdout.strip()
    head_run = container_run(hosts, "api-1")

    with Load(f"http://{head}:8000/predict", body, workers=4) as load:
        answers, failed, nodes, rate = load_window(load, 10)
        assert failed == 0 and set(nodes) == {head, worker}, (load.statuses, nodes)
        figures["two replicas (one per node): requests/s, answers by node"] = (rate, nodes)

        # The worker host's container stopped: its replica and proxy are gone.
        before = load.snapshot()
        hosts.exec("api-2", "docker stop -t 10 mlops-api")
        stopped = time.monotonic()
        # The head's node keeps its replica (one per node); the second waits for a node.
        wait_for(lambda: load_window(load, 3)[2].keys() == {head}, 60, 0, "answers from the head's replica only")
        figures["worker stopped: only the head's replica answers after (s)"] = round(time.monotonic() - stopped, 1)
        assert replicas_on(hosts, "api-1", head) == 1
        answers, failed, nodes, rate = load_window(load, 10)
        assert failed == 0 and set(nodes) == {head}, (load.statuses, nodes)
        figures["one replica (the head's): requests/s"] = rate
        after = load.snapshot()
        lost = (after[0] - before[0], after[1] - before[1])
        figures["worker stopped: requests, failed"] = lost
        assert lost[1] <= lost[0] * 0.01, load.statuses

        # Started again: it rejoins the cluster and gets the waiting replica back; the head's
        # container (and so Ray's control plane) was not restarted.
        hosts.exec("api-2", "docker start mlops-api")
        restarted = time.monotonic()
        wait_for(lambda: worker in load_window(load, 2)[2], 180, 0, "a replica on the worker's node again",
                 last=lambda: hosts.exec("api-2", "docker logs --tail 20 mlops-api 2>&1", check=False).stdout)
        figures["worker started: its replica answers after (s)"] = round(time.monotonic() - restarted, 1)
        assert container_run(hosts, "api-1") == head_run

        # The head's replica process killed: the worker's replica serves on; Serve starts a
        # new replica on the head.
        before = load.snapshot()
        killed = hosts.exec("api-1", "pkill -9 -f -e '^ray::ServeReplica'", check=False)
        assert killed.returncode == 0, f"no replica process on the head: {killed.stdout}{killed.stderr}"
        killed_at = time.monotonic()
        wait_for(lambda: load_window(load, 2)[2].keys() == {head, worker}, 120, 0, "a replica on the head's node again")
        figures["head's replica killed: both nodes answer again after (s)"] = round(time.monotonic() - killed_at, 1)
        after = load.snapshot()
        figures["head's replica killed: requests, failed, answers by node"] = (
            after[0] - before[0], after[1] - before[1],
            {n: c - before[2].get(n, 0) for n, c in after[2].items()})
        assert after[1] - before[1] <= (after[0] - before[0]) * 0.01, load.statuses
        assert container_run(hosts, "api-1") == head_run
    print(f"\n[api cluster faults] {json.dumps(figures)}")


def test_the_head_applies_serve_settings_under_load_and_no_request_fails(hosts, test_split):
    """`container apply` is how a host added or removed (and a new model, issue 15 part 3)
    reaches the running application: under load through both hosts' ports, the head applies
    its settings again, unchanged and then with a new autoscaling target; every request is
    answered, and the cluster is as before (one replica per node) at the end.

    Not per_node: a run that changed it (1 -> 2 -> 1) here left a rolling replacement behind,
    and the next test's requests through the worker failed (connection refused, 404) while
    it went on; a change of per_node is not applied without loss."""
    head, worker = hosts.address("api-1"), hosts.address("api-2")
    body = {"instances": as_instances(test_split[0].head(3))}
    runs = {name: container_run(hosts, name) for name in ("api-1", "api-2")}
    apply = "docker exec mlops-api python -m mlops_assets.serving.container apply"
    settings = "/etc/mlops-assets/serve/autoscaling"
    original = hosts.exec("api-1", f"cat {settings}").stdout
    figures = {}
    with Load(f"http://{head}:8000/predict", body, workers=2) as via_head, \
            Load(f"http://{worker}:8000/predict", body, workers=2) as via_worker:
        time.sleep(3)
        for attempt in range(3):
            started = time.monotonic()
            hosts.exec("api-1", apply)
            figures.setdefault("apply, unchanged (s)", []).append(round(time.monotonic() - started, 1))
            time.sleep(3)
        hosts.exec("api-1", f"chmod u+w {settings} && echo min=2,max=2,target=2,per_node=1 > {settings}")
        hosts.exec("api-1", apply)
        time.sleep(5)
        hosts.exec("api-1", f"echo -n '{original}' > {settings} && chmod 0444 {settings}")
        hosts.exec("api-1", apply)
        time.sleep(5)
    figures["requests, failed through the head / the worker"] = ((via_head.total, via_head.failed),
                                                                 (via_worker.total, via_worker.failed))
    print(f"\n[api cluster apply] {json.dumps(figures)}")
    assert via_head.failed + via_worker.failed == 0, (via_head.statuses, via_head.samples, via_worker.statuses, via_worker.samples)
    assert {name: container_run(hosts, name) for name in ("api-1", "api-2")} == runs
    assert hosts.exec("api-1", f"cat {settings}").stdout == original
    assert [replicas_on(hosts, name, hosts.address(name)) for name in ("api-1", "api-2")] == [1, 1]
    for address in (head, worker):
        assert served_by_nodes(f"http://{address}:8000", body) == {head, worker}


def _new_version(trained_home) -> str:
    """The champion registered again as a new version (its files, its manifest and engine
    tags): to the API image, another model with the same serving code."""
    from mlflow import MlflowClient

    champion = trained_home["selected"].champion
    client = MlflowClient(champion.tracking_uri)
    source = client.get_model_version(champion.name, champion.version)
    return str(client.create_model_version(champion.name, source.source, run_id=source.run_id, tags=source.tags).version)


def _variables_for_version(trained_home, version: str) -> dict:
    """The converged playbook variables with container_image's image for `version` (built, or
    found and its archive saved again: saving one removes the others)."""
    import logging

    from mlops_assets.image.build import image_for_champion
    from mlops_assets.resources.api_deployer import archive_image_name
    from mlops_assets.resources.mlflow_registry import Champion

    champion = trained_home["selected"].champion
    engine = _engine()
    image = image_for_champion(engine, Champion(champion.name, version, f"models:/{champion.name}/{version}",
                                                champion.tracking_uri, champion.engine),
                               Path(engine.images_dir), logging.getLogger("image")).image
    repository, tag = archive_image_name(image.archive).rsplit(":", 1)
    return {**CONVERGED["variables"], "api_image_repository": repository, "api_image_tag": tag,
            "api_image_archive": image.archive, "api_model_version": version}


def test_a_new_model_reaches_every_replica_in_place_and_a_refused_one_is_rolled_back(hosts, ansible, trained_home, test_split):
    """Part 3 of issue 15: a new image with the same serving code (another registered version)
    changes only the model. The role unpacks its model on both hosts and the head applies it:
    Serve reconfigures every replica on both nodes in place, under load through both hosts no
    request fails and no container restarts, and both answer the new version. Then a version
    whose files on the hosts do not match its manifest: the replicas refuse it (keeping the
    model in service) on the worker only, the head's wait for every node finds it, and the role
    rolls the whole cluster back and fails saying so."""
    head, worker = hosts.address("api-1"), hosts.address("api-2")
    inventory = _inventory(hosts, ["api-1", "api-2"])
    body = {"instances": as_instances(test_split[0].head(3))}
    old_version = CONVERGED["variables"]["api_model_version"]
    version = _new_version(trained_home)
    variables = _variables_for_version(trained_home, version)
    runs = {name: container_run(hosts, name) for name in ("api-1", "api-2")}
    figures = {}
    with Load(f"http://{head}:8000/predict", body, workers=2) as via_head, \
            Load(f"http://{worker}:8000/predict", body, workers=2) as via_worker:
        time.sleep(3)
        started = time.monotonic()
        ansible.run_playbook(inventory, "tests/api.yml", extra_vars=variables)
        figures["converge to the new model (s)"] = round(time.monotonic() - started, 1)
        time.sleep(3)
    figures["requests, failed, versions through the head / the worker"] = (
        (via_head.total, via_head.failed, via_head.versions), (via_worker.total, via_worker.failed, via_worker.versions))
    assert via_head.failed + via_worker.failed == 0, (via_head.statuses, via_head.samples, via_worker.samples)
    assert {name: container_run(hosts, name) for name in ("api-1", "api-2")} == runs
    # Both versions answered during the update; the last answers through both hosts are the new one.
    assert set(via_head.versions) == {old_version, version}, via_head.versions
    for address in (head, worker):
        nodes, versions = set(), set()
        for _ in range(12):
            answer = requests.post(f"http://{address}:8000/predict", json=body, timeout=30)
            nodes.add(answer.headers["x-served-by"])
            versions.add(answer.json()["model"]["version"])
        assert versions == {version} and nodes == {head, worker}, (address, versions, nodes)
    for name in ("api-1", "api-2"):
        assert hosts.exec(name, f"stat -c '%U %a' /var/lib/mlops-api/models/{version}/MLmodel").stdout.split() == ["root", "644"]
    model_file = json.loads(hosts.exec("api-1", "cat /etc/mlops-assets/serve/model.json").stdout)
    assert model_file["version"] == version and model_file["dir"] == f"/var/lib/mlops-api/models/{version}"

    # A version whose files on the hosts differ from its manifest (as a corrupted disk would):
    # refused by every replica, rolled back in place.
    bad = _new_version(trained_home)
    refused = _variables_for_version(trained_home, bad)
    # On the worker only (a host-local fault): the head's replica loads it, the worker's refuses
    # it, and the whole cluster goes back. The head gets an intact copy (unpacked as usual).
    hosts.exec("api-2", f"cp -a /var/lib/mlops-api/models/{version} /var/lib/mlops-api/models/{bad} && cd "
                        f"/var/lib/mlops-api/models/{bad} && ls model.skops model.onnx 2>/dev/null | head -1 "
                        "| xargs -I{} sh -c 'echo tampered >> {}' && grep -l tampered model.*")
    with Load(f"http://{head}:8000/predict", body, workers=2) as via_head:
        started = time.monotonic()
        with pytest.raises(AnsibleError) as failure:
            ansible.run_playbook(inventory, "tests/api.yml", extra_vars=refused)
        figures["refused model: rolled back after (s)"] = round(time.monotonic() - started, 1)
    figures["refused model: requests, failed, versions"] = (via_head.total, via_head.failed, via_head.versions)
    message = str(failure.value)
    assert f"Model version {bad} did not become ready" in message and f"rolled back to model version {version}" in message, message
    assert "ready again" in message and "api-2" in message, message  # the worker left as it was
    assert via_head.failed == 0 and set(via_head.versions) <= {version, bad}, (via_head.statuses, via_head.versions)
    assert {name: container_run(hosts, name) for name in ("api-1", "api-2")} == runs
    assert json.loads(hosts.exec("api-1", "cat /etc/mlops-assets/serve/model.json").stdout)["version"] == version
    for address in (head, worker):
        for _ in range(6):  # answers from both nodes' replicas
            ready = json.loads(hosts.exec("api-1", f"curl -s http://{address}:8000/readyz").stdout)
            assert ready["model"]["version"] == version and "rejected" not in ready, ready
    for name in ("api-1", "api-2"):
        hosts.exec(name, f"rm -rf /var/lib/mlops-api/models/{bad}")
    # The tests that follow converge on the model in service (its image's archive saved again).
    CONVERGED["variables"] = _variables_for_version(trained_home, version)
    print(f"\n[api cluster model update] {json.dumps(figures)}")


def test_a_third_api_host_joins_and_leaves_under_load(hosts, ansible, test_split):
    """api_instance_count 2 -> 3 -> 2 as the `api` role sees it: the third host joins and gets
    a replica while the head applies the new minimum in place (neither running container
    restarts, no request through them fails); then it leaves as tofu_state removes a host
    (api_drain.yml, then the converge on the inventory of two), and no request through the
    hosts that stay fails either."""
    import ipaddress

    head, worker = hosts.address("api-1"), hosts.address("api-2")
    third = str(ipaddress.ip_address(worker) + 1)
    store = (STORE, hosts.address(STORE))
    hosts.reshape([("api-1", head), ("api-2", worker), ("api-3", third), store])
    hosts.start_docker("api-3")
    body = {"instances": as_instances(test_split[0].head(3))}
    variables = CONVERGED.get("variables")
    assert variables, "the first test converges the cluster"
    runs = {name: container_run(hosts, name) for name in ("api-1", "api-2")}
    figures = {}
    with Load(f"http://{head}:8000/predict", body, workers=2) as via_head, \
            Load(f"http://{worker}:8000/predict", body, workers=2) as via_worker:
        started = time.monotonic()
        grown = ansible.run_playbook(_inventory(hosts, ["api-1", "api-2", "api-3"]), "tests/api.yml", extra_vars=variables)
        figures["2 -> 3: converge (s)"] = round(time.monotonic() - started, 1)
        assert grown.per_host["api-2"]["changed"] == 0, grown.per_host
        assert hosts.exec("api-1", "cat /etc/mlops-assets/serve/autoscaling").stdout.startswith("min=3,max=3,")
        wait_for(lambda: served_by_nodes(f"http://{third}:8000", body, 20) >= {third}, 60, 1, "the third host's replica")
        assert {name: container_run(hosts, name) for name in ("api-1", "api-2")} == runs
        figures["2 -> 3: requests, failed through the staying hosts"] = (via_head.total + via_worker.total,
                                                                        via_head.failed + via_worker.failed)
        assert via_head.failed + via_worker.failed == 0, (via_head.statuses, via_head.samples, via_worker.statuses, via_worker.samples)

        # What tofu_state runs before OpenTofu destroys the third instance (api_drain.yml): the
        # head's minimum for two hosts, the third node drained (its replica moves, gracefully),
        # its container stopped; then the converge on the two hosts that stay changes nothing.
        before = (via_head.total + via_worker.total, via_head.failed + via_worker.failed)
        started = time.monotonic()
        drained = ansible.run_playbook(_inventory(hosts, ["api-1", "api-2", "api-3"]), "api_drain.yml",
                                       extra_vars={**variables, "api_leaving": ["api-3"]})
        figures["3 -> 2: drain (s)"] = round(time.monotonic() - started, 1)
        assert drained.per_host["api-2"]["changed"] == 0, drained.per_host
        assert hosts.exec("api-1", "cat /etc/mlops-assets/serve/autoscaling").stdout.startswith("min=2,max=2,")
        assert hosts.exec("api-3", "docker inspect -f '{{.State.Running}}' mlops-api").stdout.strip() == "false"
        started = time.monotonic()
        shrunk = ansible.run_playbook(_inventory(hosts, ["api-1", "api-2"]), "tests/api.yml", extra_vars=variables)
        figures["3 -> 2: converge (s)"] = round(time.monotonic() - started, 1)
        assert shrunk.per_host["api-1"]["changed"] == shrunk.per_host["api-2"]["changed"] == 0, shrunk.per_host
        time.sleep(5)
    shrink = (via_head.total + via_worker.total - before[0], via_head.failed + via_worker.failed - before[1])
    figures["3 -> 2: requests, failed through the staying hosts"] = shrink
    assert {name: container_run(hosts, name) for name in ("api-1", "api-2")} == runs
    for address in (head, worker):
        assert served_by_nodes(f"http://{address}:8000", body) == {head, worker}
    print(f"\n[api cluster scale] {json.dumps(figures)}")
    assert shrink[1] == 0, (via_head.statuses, via_head.samples, via_worker.statuses, via_worker.samples)

    # A leaving host whose drain cannot be requested (here its container is down): the head
    # must not lower its target, since Serve could then stop a staying host's replica. The
    # playbook stops at the head's check, which names the host.
    with pytest.raises(AnsibleError) as refused:
        ansible.run_playbook(_inventory(hosts, ["api-1", "api-2", "api-3"]), "api_drain.yml",
                             extra_vars={**variables, "api_leaving": ["api-3"]})
    failures = {failure.host: failure for failure in refused.value.result.failures}
    assert set(failures) == {"api-1", "api-3"}, refused.value
    assert failures["api-1"].task.startswith("Every leaving host's drain was requested"), refused.value
    assert "['api-3']" in failures["api-1"].message, refused.value
    hosts.reshape([("api-1", head), ("api-2", worker), store])


def test_the_head_down_past_rays_reconnect_timeout_the_worker_serves_on_and_the_head_resumes(hosts, ansible, test_split):
    """Ray's GCS fault tolerance (api_ray_gcs_store): the head's container stopped for 75 s
    under load through the worker's port, longer than Ray's default 60 s after which a worker
    without a store stops (measured before the store: 8,540 of 39,220 failed, the worker's
    container restarted). The worker's replica serves on alone; then the next converge (what
    `make run` does) starts the head, which resumes the same cluster from Redis: Serve
    reconnects to the worker's running replica, nothing on the worker restarts, and both
    nodes serve through both hosts again."""
    head, worker = hosts.address("api-1"), hosts.address("api-2")
    body = {"instances": as_instances(test_split[0].head(3))}
    worker_run = container_run(hosts, "api-2")
    worker_replicas = hosts.exec("api-2", "pgrep -f '^ray::ServeReplica'").stdout.split()
    assert len(worker_replicas) == 1, worker_replicas
    figures = {}
    with Load(f"http://{worker}:8000/predict", body, workers=4) as load:
        time.sleep(3)
        before = load.snapshot()
        hosts.exec("api-1", "docker stop -t 10 mlops-api")
        stopped = time.monotonic()
        windows = [load_window(load, 5)[:2] for _ in range(15)]
        figures["head down 75 s: requests, failed per 5 s through the worker"] = windows
        down = load.snapshot()
        figures["head down: requests, failed through the worker"] = (down[0] - before[0], down[1] - before[1])
        started = time.monotonic()
        figures["head stopped for (s)"] = round(started - stopped, 1)
        ansible.run_playbook(_inventory(hosts, ["api-1", "api-2"]), "tests/api.yml", extra_vars=CONVERGED["variables"])
        figures["the converge after (s)"] = round(time.monotonic() - started, 1)
        wait_for(lambda: all(served_by_nodes(f"http://{a}:8000", body) == {head, worker} for a in (head, worker)), 120, 2,
                 "replicas of both nodes through both hosts after the converge")
        figures["both nodes serve again after the converge's start (s)"] = round(time.monotonic() - started, 1)
        after = load.snapshot()
        figures["head down and back: requests, failed through the worker"] = (after[0] - before[0], after[1] - before[1])
    print(f"\n[api cluster head down] {json.dumps(figures)}")
    # Every 5 s while the head was down (past 60 s too), the worker answered; at most 1% failed.
    assert all(answers > failed for answers, failed in windows), windows
    assert after[1] - before[1] <= (after[0] - before[0]) * 0.01, (load.statuses, load.samples)
    assert container_run(hosts, "api-2") == worker_run
    assert hosts.exec("api-2", "pgrep -f '^ray::ServeReplica'").stdout.split() == worker_replicas
    # The head's new replica is in its exporter once it has reported (every 10 s).
    wait_for(lambda: [replicas_on(hosts, name, hosts.address(name)) for name in ("api-1", "api-2")] == [1, 1], 30, 2,
             "one replica on each node in the exporters")
