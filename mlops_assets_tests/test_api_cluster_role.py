"""The `api` role on two API hosts (tofu_state's inventory with api_instance_count = 2), the
Molecule way on two Debian 12 test hosts of the rehearsal harness over real SSH: the real API
image (container_image, built on this machine) on both, the first host the Ray head, the
second a worker joining it with the cluster's token; one replica on each node; each host
answers on the API port with replicas of both nodes; converged again, nothing changes.

The hosts' Docker comes with the harness's host layer (started as the `docker` role starts it
on these hosts); test_ansible_roles.py tests that role itself.
"""

import json
import secrets
import time

import pytest

from mlops_assets.resources.ansible import AnsibleError
# infra_tf's ray_ports defaults, as tofu_state's inventory carries them (the image's own copy).
from mlops_assets.serving.container import RAY_PORTS

from .ansible_helpers import ansible_for_test_hosts
from .serving_fixtures import as_instances, served_by_nodes

pytestmark = [pytest.mark.stack, pytest.mark.root]



REPOSITORY = "localhost/mlops-api-cluster-test"


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
    with TestHosts([("api-1", str(subnet[10])), ("api-2", str(subnet[11]))]) as test_hosts:
        for name in test_hosts.hosts:
            test_hosts.start_docker(name)
        yield test_hosts
    assert test_hosts.footprint() == [], f"teardown left {test_hosts.footprint()}"


@pytest.fixture(scope="module")
def ansible(hosts, tmp_path_factory):
    return ansible_for_test_hosts(hosts, tmp_path_factory.mktemp("ansible"))


def test_api_role_forms_one_ray_cluster_across_two_api_hosts(hosts, ansible, trained_home, test_split):
    from mlops_assets.image.context import DEFAULT_REPOSITORY, RUNTIME_SUFFIX
    from mlops_assets.offline_base import BASE_IMAGE
    from mlops_assets.resources.api_deployer import archive_image_name
    from mlops_assets.resources.container_engine import ContainerEngine
    from mlops_assets.settings import load_settings

    from .image_helpers import materialize_container_image

    timings = {}
    started = time.monotonic()
    # The runtime under the sim pipeline's name (shared with the rehearsal, not rebuilt),
    # qualified: a short name is tagged docker.io/library/NAME, which the hosts' Docker loads
    # as NAME (what the role then does not find).
    engine = ContainerEngine(repository=REPOSITORY, runtime_repository=f"localhost/{DEFAULT_REPOSITORY}{RUNTIME_SUFFIX}",
                             base_image=BASE_IMAGE, required=True, save_archive=True,
                             images_dir=str(load_settings().home / "images"))
    image = materialize_container_image(trained_home, engine).output_for_node("container_image")
    timings["image (s)"] = round(time.monotonic() - started, 1)
    assert image.archive and image.runtime_archive, image

    head, worker = hosts.address("api-1"), hosts.address("api-2")
    inventory = {"all": {"vars": {"ansible_user": "admin", "api_port": 8000, "metrics_port": 8080}, "children": {"api": {
        "vars": {"ray_head_address": head, "ray_ports": RAY_PORTS},
        "hosts": {"api-1": {"ansible_host": head, "private_ip": head, "ray_role": "head"},
                  "api-2": {"ansible_host": worker, "private_ip": worker, "ray_role": "worker"}}}}}}
    repository, tag = archive_image_name(image.archive).rsplit(":", 1)
    variables = {"api_image_repository": repository, "api_image_tag": tag, "api_image_source": "archive",
                 "api_image_archive": image.archive, "api_runtime_image": archive_image_name(image.runtime_archive),
                 "api_runtime_archive": image.runtime_archive, "api_model_version": str(image.model_version),
                 "api_ready_timeout": 240, "api_autoscaling_min": 2, "api_autoscaling_max": 2}
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
        assert any(e.startswith("MLOPS_AUTOSCALING=") for e in config["Config"]["Env"]) == (role == "head")

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
    print(f"\n[api cluster role] {json.dumps(timings)}")
