"""The Ansible roles, tested the Molecule way on real Debian 12 hosts over real SSH (the
rehearsal harness: network namespaces, own root, own sshd, no systemd): converge, converge
again and fail on any change, verify.

Everything goes through the `Ansible` resource (the one deployed_hosts uses), with an
inventory shaped like tofu_state's `ansible_inventory`. Tests talk only to the test hosts'
addresses. Images come from archives built locally from the offline Debian base (no registry
is reachable): a stand-in API, and Prometheus and Alertmanager from Debian's packages loaded
through the roles' own variables, exactly as a user would set them. No Grafana image exists
offline: the `grafana` role runs in render-only mode and its files are checked on the host.
"""

import base64
import json
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mlops_assets.resources.ansible import AnsibleError

from .ansible_helpers import ansible_for_test_hosts

pytestmark = [pytest.mark.stack, pytest.mark.root, pytest.mark.second_lane]

TIMINGS: dict[str, float] = {}
GRAFANA_PASSWORD = "rehearsal-" + os.urandom(6).hex()
PROMETHEUS_PASSWORD = "prometheus-" + os.urandom(6).hex()
ALERTMANAGER_PASSWORD = "alertmanager-" + os.urandom(6).hex()
PUSHGATEWAY_PASSWORD = "pushgateway-" + os.urandom(6).hex()
TRACKING_ADMIN_PASSWORD = "tracking-" + os.urandom(8).hex()
TRACKING_POSTGRES_PASSWORD = "postgres-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def hosts(request):
    from mlops_assets.rehearsal.hosts import TestHosts, free_subnet

    subnet = free_subnet()
    started = time.monotonic()
    with TestHosts([("api", str(subnet[10])), ("monitoring", str(subnet[11]))]) as test_hosts:
        TIMINGS["hosts_up_s"] = round(time.monotonic() - started, 2)
        yield test_hosts
    TIMINGS["teardown_s"] = round(test_hosts.timings.teardown_s, 2)
    assert test_hosts.footprint() == [], f"teardown left {test_hosts.footprint()}"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nansible role timings (s): {json.dumps(TIMINGS)}")


@pytest.fixture(scope="module")
def inventory(hosts):
    """The shape of tofu_state's ansible_inventory output, with the test hosts' addresses."""

    def host(name, **host_vars):
        return {name: {"ansible_host": hosts.address(name), "private_ip": hosts.address(name), **host_vars}}

    return {
        "all": {
            "vars": {"ansible_user": "admin", "api_port": 8000, "metrics_port": 8080},
            "children": {
                "api": {"hosts": host("api")},
                "monitoring": {"vars": {"prometheus_port": 9090, "grafana_port": 3000}, "hosts": host(
                    # The docker role's other way without systemd: dockerd under start-stop-daemon.
                    "monitoring", docker_sysv_start_method="start-stop-daemon")},
            },
        }
    }


@pytest.fixture(scope="module")
def ansible(hosts, tmp_path_factory):
    return ansible_for_test_hosts(hosts, tmp_path_factory.mktemp("ansible"))


@pytest.fixture(scope="module")
def engine():
    from mlops_assets.rehearsal.engine import docker_client

    return docker_client()


def converge_twice(ansible, inventory, playbook, name, **extra_vars):
    """Converge, converge again: the second run must change nothing on any host."""
    started = time.monotonic()
    first = ansible.run_playbook(inventory, playbook, extra_vars=extra_vars)
    TIMINGS[f"{name}_converge_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    second = ansible.run_playbook(inventory, playbook, extra_vars=extra_vars)
    TIMINGS[f"{name}_idempotence_s"] = round(time.monotonic() - started, 2)
    changed = {host: counts["changed"] for host, counts in second.per_host.items() if counts["changed"]}
    assert changed == {}, f"{playbook}: the second converge changed something: {changed}"
    return first, second


def refused_without_password_then_converged(ansible, inventory, role: str, variables: dict, *, password_var: str,
                                            password: str, check_task: str):
    """The monitoring roles' contract for secrets: without the password the role refuses at
    `check_task`, naming it; with it, it converges twice (the second run changes nothing).
    `variables` keeps the password for the test's later runs."""
    with pytest.raises(AnsibleError) as failure:
        ansible.run_playbook(inventory, f"tests/{role}.yml", extra_vars=variables)
    assert f"monitoring failed at task '{check_task}'" in str(failure.value)
    variables[password_var] = password
    return converge_twice(ansible, inventory, f"tests/{role}.yml", role, **variables)


def http_json(url, data=None, timeout=5, auth=None):
    body = json.dumps(data).encode() if data is not None else None
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def http_status(url, method="GET", auth=None, timeout=5) -> int:
    """The HTTP status of a request (errors included), its body ignored."""
    headers = {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_docker_role(hosts, ansible, inventory):
    first, _ = converge_twice(ansible, inventory, "tests/docker.yml", "docker")
    assert set(first.per_host) == {"api", "monitoring"}
    for name in ("api", "monitoring"):
        # Verify: the engine answers (no systemd here).
        assert hosts.ssh(name, "docker info --format '{{.Name}}'").stdout.strip() == name
    # api: Debian's init script, with the ulimit fix; monitoring: start-stop-daemon.
    assert hosts.exec("api", "test -s /var/run/docker-ssd.pid && /etc/init.d/docker status", check=False).returncode == 0
    assert "|| true" in hosts.exec("api", "grep 'ulimit -n' /etc/init.d/docker").stdout
    pid = hosts.exec("monitoring", "cat /run/dockerd.pid").stdout.strip()
    assert hosts.exec("monitoring", f"cat /proc/{pid}/comm").stdout.strip() == "dockerd"

    # docker_skip_if_running (site.yml's api play): a running engine gets one check, not the
    # role; a stopped one gets the whole role and answers again.
    checked = ansible.run_playbook(inventory, "tests/docker.yml", extra_vars={"docker_skip_if_running": True})
    for name in ("api", "monitoring"):
        assert checked.per_host[name]["changed"] == 0 and checked.per_host[name]["ok"] <= 3, checked.per_host
        assert first.per_host[name]["ok"] > checked.per_host[name]["ok"] + 5, (first.per_host, checked.per_host)
    hosts.exec("api", "/etc/init.d/docker stop")
    assert hosts.exec("api", "docker info", check=False).returncode != 0
    restarted = ansible.run_playbook(inventory, "tests/docker.yml", extra_vars={"docker_skip_if_running": True})
    assert restarted.per_host["api"]["changed"] >= 1 and restarted.per_host["monitoring"]["changed"] == 0, restarted.per_host
    assert hosts.ssh("api", "docker info --format '{{.Name}}'").stdout.strip() == "api"


def test_api_role_deploys_then_rolls_back_a_broken_image(hosts, ansible, inventory, engine, tmp_path):
    from mlops_assets.image.archive import diff_ids, write_layered
    from mlops_assets.offline_base import BASE_IMAGE
    from mlops_assets.rehearsal.images import build_test_api_image, save_archive
    from mlops_assets.resources.api_deployer import archive_image_name

    key_file = tmp_path / "api-keys"
    key_file.write_text("role-test-key\n")

    good = build_test_api_image(engine)
    broken = build_test_api_image(engine, broken=True)
    started = time.monotonic()
    # Layered archives, as container_image ships them: the images' own layers only, on a
    # "runtime" (here the Debian base both are built on) that the role ships when the host lacks it.
    runtime_archive = save_archive(engine, BASE_IMAGE)
    base_layers = diff_ids(runtime_archive)
    good_archive, broken_archive = (
        write_layered(save_archive(engine, image), tmp_path / f"{name}-layered.tar", base_layers).path
        for name, image in (("good", good), ("broken", broken)))
    TIMINGS["api_archives_s"] = round(time.monotonic() - started, 2)
    assert good_archive.stat().st_size < 1e6 < 100e6 < runtime_archive.stat().st_size
    repository, good_tag = good.rsplit(":", 1)

    runtime = archive_image_name(str(runtime_archive))
    hosts.exec("api", f"docker image rm {runtime} >/dev/null 2>&1 || true", check=False)
    variables = {"api_image_repository": repository, "api_image_tag": good_tag, "api_image_source": "archive",
                 "api_image_archive": str(good_archive), "api_model_version": "1", "api_ready_timeout": 30,
                 "api_key_file": str(key_file), "api_runtime_image": runtime, "api_runtime_archive": str(runtime_archive)}
    converge_twice(ansible, inventory, "tests/api.yml", "api", **variables)
    # The runtime was shipped, then the layered archive loaded on it: the same image, by ID,
    # as the engine that built it holds.
    on_host = hosts.ssh("api", f"sudo docker image inspect --format '{{{{.Id}}}}' {good} {runtime}", user="admin").stdout.split()
    assert on_host == [engine.images.get(good).id, engine.images.get(BASE_IMAGE).id], on_host
    # The key file reaches the container as a read-only mount whose path MLOPS_API_KEY_FILE
    # names; the key itself is in neither the container's config nor a command line.
    config = json.loads(hosts.ssh("api", "sudo docker inspect mlops-api", user="admin").stdout)[0]
    assert "MLOPS_API_KEY_FILE=/run/secrets/mlops-api/keys" in config["Config"]["Env"]
    assert [(m["Source"], m["Destination"], m["RW"]) for m in config["Mounts"]] == [
        ("/etc/mlops-assets/api-keys", "/run/secrets/mlops-api", False)]
    assert "role-test-key" not in json.dumps(config)
    assert hosts.ssh("api", "sudo stat -c '%u %a' /etc/mlops-assets/api-keys/keys", user="admin").stdout.split() == ["10001", "400"]
    assert hosts.ssh("api", "sudo docker exec --user 10001 mlops-api cat /run/secrets/mlops-api/keys", user="admin").stdout.strip() == "role-test-key"
    assert "role-test-key" not in hosts.ssh("api", "ps -eo args", user="admin").stdout
    # Hardened: read-only root with tmpfs where the API writes, no capability, no privilege
    # gained through setuid, bounded memory (the role's defaults).
    host_config = config["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
    assert any(opt.startswith("no-new-privileges") for opt in host_config["SecurityOpt"]), host_config["SecurityOpt"]
    assert host_config["Memory"] == 2 * 1024**3 and host_config["ShmSize"] == 256 * 1024**2
    assert set(host_config["Tmpfs"]) == {"/tmp", "/home/api"}
    assert hosts.ssh("api", "sudo docker exec mlops-api touch /opt/x", user="admin", check=False).returncode != 0
    api = hosts.address("api")
    # Verify through the API host's address: ready with the expected version, predicts.
    assert http_json(f"http://{api}:8000/readyz") == (200, {"status": "ready", "model": {"name": "test-model", "version": "1"}})
    status, answer = http_json(f"http://{api}:8000/predict", {"instances": [{"bill_length_mm": 39.1}]})
    assert status == 200 and answer["model"]["version"] == "1" and len(answer["predictions"]) == 1
    inspect = hosts.ssh("api", "sudo docker inspect mlops-api --format '{{.HostConfig.RestartPolicy.Name}} {{.Config.Image}}'", user="admin")
    assert inspect.stdout.split() == ["unless-stopped", good]

    # A new image whose /readyz never reports ready: the previous one comes back, the role fails.
    _, broken_tag = broken.rsplit(":", 1)
    started = time.monotonic()
    with pytest.raises(AnsibleError) as failure:
        ansible.run_playbook(inventory, "tests/api.yml", extra_vars={
            **variables, "api_image_tag": broken_tag, "api_image_archive": str(broken_archive),
            "api_model_version": "2", "api_ready_timeout": 10})
    TIMINGS["api_rollback_s"] = round(time.monotonic() - started, 2)
    message = str(failure.value)
    assert "api failed at task" in message
    assert f"{repository}:{broken_tag} did not become ready" in message
    assert f"Rolled back to the previous image {good} (ready again)" in message
    assert "expected model version 2" in message
    assert http_json(f"http://{api}:8000/readyz")[1]["model"]["version"] == "1"
    assert hosts.ssh("api", "docker inspect mlops-api --format '{{.Config.Image}}'").stdout.strip() == good


def archive_variables(engine, role: str) -> dict[str, str]:
    """The variables a user sets to load a role's image from an archive instead of pulling it:
    the rehearsal's image of `role` (prometheus, alertmanager, node_exporter, pushgateway) built
    from Debian's package and saved as an archive, the build timed."""
    from mlops_assets.rehearsal import images

    started = time.monotonic()
    image = getattr(images, f"build_{role}_image")(engine)
    archive = images.save_archive(engine, image)
    TIMINGS[f"{role}_image_s"] = round(time.monotonic() - started, 2)
    repository, tag = image.rsplit(":", 1)
    return {f"{role}_image_source": "archive", f"{role}_image_repository": repository, f"{role}_image_tag": tag,
            f"{role}_image_archive": str(archive)}


def test_node_exporter_role_on_every_host(hosts, ansible, inventory, engine):
    variables = archive_variables(engine, "node_exporter")
    first, _ = converge_twice(ansible, inventory, "tests/node_exporter.yml", "node_exporter", **variables)
    assert set(first.per_host) == {"api", "monitoring"}
    for name in ("api", "monitoring"):
        address = hosts.address(name)
        config = json.loads(hosts.exec(name, "docker inspect node-exporter").stdout)[0]
        host_config = config["HostConfig"]
        # node_exporter's documented container set-up: the host's namespaces, its root read-only.
        assert host_config["NetworkMode"] == "host" and host_config["PidMode"] == "host"
        assert [(m["Source"], m["Destination"], m["RW"]) for m in config["Mounts"]] == [("/", "/host", False)]
        assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
        assert f"--web.listen-address={address}:9100" in config["Args"]
        # Only on the private address: nothing answers on the host's loopback.
        assert hosts.exec(name, "curl -sf -o /dev/null http://127.0.0.1:9100/metrics", check=False).returncode != 0
        with urllib.request.urlopen(f"http://{address}:9100/metrics", timeout=5) as response:
            metrics = response.read().decode()
        # What the hosts dashboard reads, the root filesystem (an overlay here) included.
        for series in ("node_cpu_seconds_total{", "node_load1 ", "node_memory_MemAvailable_bytes ",
                       "node_network_receive_bytes_total{"):
            assert series in metrics, series
        assert re.search(r'^node_filesystem_avail_bytes\{[^}]*mountpoint="/"\} [0-9.e+]+$', metrics, re.M), metrics[-2000:]
        assert "node_disk_" not in metrics  # only the dashboard's collectors
    # node_exporter_skip_if_running (site.yml's api play): one that answers gets one check.
    checked = ansible.run_playbook(inventory, "tests/node_exporter.yml",
                                   extra_vars={**variables, "node_exporter_skip_if_running": True})
    for name in ("api", "monitoring"):
        assert checked.per_host[name]["changed"] == 0 and checked.per_host[name]["ok"] <= 3, checked.per_host
        assert first.per_host[name]["ok"] > checked.per_host[name]["ok"] + 3, (first.per_host, checked.per_host)


def test_pushgateway_role_keeps_pushes_behind_basic_auth_across_restarts(hosts, ansible, inventory, engine):
    from mlops_assets.monitoring import pipeline_metrics as pm

    variables = archive_variables(engine, "pushgateway")
    refused_without_password_then_converged(ansible, inventory, "pushgateway", variables, check_task="Check the web password",
                                            password_var="pushgateway_web_password", password=PUSHGATEWAY_PASSWORD)

    web = hosts.exec("monitoring", "stat -c '%a %u:%g' /etc/mlops-assets/pushgateway/web.yml; "
                     "cat /etc/mlops-assets/pushgateway/web.yml").stdout
    assert web.startswith("640 0:65534\n") and '"admin": "$2b$' in web and PUSHGATEWAY_PASSWORD not in web
    gateway, auth = f"http://{hosts.address('monitoring')}:9091", ("admin", PUSHGATEWAY_PASSWORD)
    assert http_status(f"{gateway}/metrics") == 401
    assert http_status(f"{gateway}/-/ready", auth=auth) == 200
    run = pm.Materialization("dataset", "sim", True, time.time(), dataset_rows=344)
    warnings: list[str] = []
    assert not pm.push(gateway, run, warnings.append).pushed and "401" in warnings[0]
    assert pm.push(gateway, run, pytest.fail, auth=auth).pushed
    # A restart (SIGTERM: the gateway writes its persistence file) keeps what was pushed.
    hosts.exec("monitoring", "docker restart pushgateway")
    deadline, ready = time.monotonic() + 30, None
    while ready != 200 and time.monotonic() < deadline:
        try:
            ready = http_status(f"{gateway}/-/ready", auth=auth)
        except OSError:  # not listening yet: the container is still starting
            ready = None
        if ready != 200:
            time.sleep(0.5)
    assert ready == 200, f"the Pushgateway did not answer ready within 30 s of its restart (last: {ready})"
    assert pm.read_group(gateway, {"asset": "dataset", "target": "sim"}, auth=auth)[pm.DATASET_ROWS] == 344


def rendered_monitoring_files(tmp_path: Path) -> Path:
    """The tree the monitoring code renders (rules under prometheus/rules, dashboards/): what
    the `dashboards` asset provisions and the roles copy."""
    out = tmp_path / "rendered"
    try:
        from mlops_assets.monitoring import render
    except ImportError as exc:  # the monitoring package mid-change: a minimal tree of the same shape
        print(f"monitoring renderer unavailable ({exc}); using a minimal rule file and dashboard")
        (out / "prometheus/rules").mkdir(parents=True)
        (out / "dashboards").mkdir(parents=True)
        (out / "prometheus/rules/api.rules.yml").write_text(
            "groups:\n- name: mlops-api\n  rules:\n  - alert: MlopsApiAbsent\n"
            "    expr: absent(up{job=\"mlops-api\"} == 1)\n    for: 1m\n    labels: {severity: critical}\n")
        (out / "dashboards/mlops-api.json").write_text('{"uid": "mlops-api", "title": "API", "panels": []}\n')
        return out
    render.write(render.render_all(render.default_profile()), out)
    return out


def test_prometheus_role_scrapes_the_api_host(hosts, ansible, inventory, engine, tmp_path):
    rules_dir = rendered_monitoring_files(tmp_path) / "prometheus/rules"
    rule_files = sorted(p.name for p in rules_dir.glob("*.yml"))
    assert rule_files
    variables = {**archive_variables(engine, "prometheus"),
                 "prometheus_rule_files_dir": str(rules_dir), "prometheus_scrape_interval": "2s",
                 "pushgateway_web_password": PUSHGATEWAY_PASSWORD}
    refused_without_password_then_converged(ansible, inventory, "prometheus", variables,
                                            check_task="Check that the web password is set from a secret",
                                            password_var="prometheus_web_password", password=PROMETHEUS_PASSWORD)

    config = hosts.exec("monitoring", "cat /etc/mlops-assets/prometheus/prometheus.yml").stdout
    assert f'"{hosts.address("api")}:8080"' in config
    assert sorted(hosts.exec("monitoring", "ls /etc/mlops-assets/prometheus/rules").stdout.split()) == rule_files
    prometheus = f"http://{hosts.address('monitoring')}:9090"
    auth = ("admin", PROMETHEUS_PASSWORD)
    # Basic auth on the UI and the API; the lifecycle API (quit, reload) is off even with it.
    web = hosts.exec("monitoring", "stat -c '%a %u:%g' /etc/mlops-assets/prometheus/web.yml; "
                     "cat /etc/mlops-assets/prometheus/web.yml").stdout
    assert web.startswith("640 0:65534\n") and '"admin": "$2b$' in web and PROMETHEUS_PASSWORD not in web
    assert http_status(f"{prometheus}/graph") == 401
    assert http_status(f"{prometheus}/api/v1/query?query=up") == 401
    assert http_status(f"{prometheus}/api/v1/query?query=up", auth=("admin", "wrong-password-1")) == 401
    assert http_status(f"{prometheus}/-/quit", method="POST", auth=auth) == 403
    assert http_status(f"{prometheus}/-/ready", auth=auth) == 200
    deadline, up = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        _, answer = http_json(f"{prometheus}/api/v1/query?query=up%7Bjob%3D%22mlops-api%22%7D", auth=auth)
        up = answer["data"]["result"]
        if up and up[0]["value"][1] == "1":
            break
        time.sleep(1)
    assert up and up[0]["value"][1] == "1", f"the api target is not up: {up}"
    assert up[0]["metric"]["instance"] == f"{hosts.address('api')}:8080"
    _, rules = http_json(f"{prometheus}/api/v1/rules", auth=auth)
    assert rules["data"]["groups"], "no rule group loaded"
    # The node_exporter of every host (job `node`, one instance each) and the Pushgateway, with
    # its basic auth and honor_labels (the earlier tests' roles run there); the password file
    # is Prometheus's group's only.
    password_file = hosts.exec("monitoring", "stat -c '%a %u:%g' /etc/mlops-assets/prometheus/pushgateway_password").stdout
    assert password_file.split() == ["640", "0:65534"] and PUSHGATEWAY_PASSWORD not in config
    expected = {f"{hosts.address(name)}:9100" for name in ("api", "monitoring")}
    deadline, nodes, pushed = time.monotonic() + 60, set(), []
    while time.monotonic() < deadline:
        _, answer = http_json(f"{prometheus}/api/v1/query?query=up%7Bjob%3D%22node%22%7D%3D%3D1", auth=auth)
        nodes = {r["metric"]["instance"] for r in answer["data"]["result"]}
        _, answer = http_json(f"{prometheus}/api/v1/query?query=mlops_pipeline_dataset_rows", auth=auth)
        pushed = answer["data"]["result"]
        if nodes == expected and pushed:
            break
        time.sleep(1)
    assert nodes == expected, f"node_exporter targets up: {nodes}"
    assert [(r["metric"]["job"], r["metric"]["asset"], r["value"][1]) for r in pushed] == [("mlops-pipeline", "dataset", "344")]

    # A rule file Prometheus refuses: the run fails naming the refusal, and Prometheus keeps
    # answering with the rules it had (a reload, not a restart, leaves them in place).
    broken_dir = tmp_path / "broken-rules"
    broken_dir.mkdir()
    for name in rule_files:
        (broken_dir / name).write_text((rules_dir / name).read_text())
    (broken_dir / rule_files[0]).write_text("groups:\n- name: broken\n  rules:\n  - alert: Broken\n    expr: 'up =='\n")
    with pytest.raises(AnsibleError) as failure:
        ansible.run_playbook(inventory, "tests/prometheus.yml",
                             extra_vars={**variables, "prometheus_rule_files_dir": str(broken_dir)})
    assert "refused the new configuration" in str(failure.value), failure.value
    _, kept = http_json(f"{prometheus}/api/v1/rules", auth=auth)
    assert [g["name"] for g in kept["data"]["groups"]] == [g["name"] for g in rules["data"]["groups"]]

    # A new password takes effect on the next run (new hash, reload); the old one is refused.
    # The same run ships the good rules again, and Prometheus loads them.
    changed = ansible.run_playbook(inventory, "tests/prometheus.yml",
                                   extra_vars={**variables, "prometheus_web_password": PROMETHEUS_PASSWORD + "-new"})
    assert changed.per_host["monitoring"]["changed"] >= 1
    assert http_status(f"{prometheus}/-/ready", auth=auth) == 401
    assert http_status(f"{prometheus}/-/ready", auth=("admin", PROMETHEUS_PASSWORD + "-new")) == 200
    _, reloaded = http_json(f"{prometheus}/api/v1/rules", auth=("admin", PROMETHEUS_PASSWORD + "-new"))
    assert [g["name"] for g in reloaded["data"]["groups"]] == [g["name"] for g in rules["data"]["groups"]]


def test_alertmanager_role_runs_the_rendered_config_behind_basic_auth(hosts, ansible, inventory, engine, tmp_path):
    from mlops_assets.monitoring import render
    from mlops_assets.monitoring.alertmanager_config import AlertRouting, Smtp

    # What `dashboards` renders with a webhook and e-mail (the password file as the container sees it).
    routing = AlertRouting(webhook_url="http://172.17.0.1:9097/alerts",
                           smtp=Smtp("smtp.example.org:587", "am@example.org", "ops@example.org", "am",
                                     "/etc/alertmanager/smtp_password"))
    out = tmp_path / "rendered"
    render.write(render.render_all(render.default_profile(), render.RenderSettings(routing=routing)), out)
    rendered = out / render.ALERTMANAGER_FILE
    variables = {**archive_variables(engine, "alertmanager"),
                 "alertmanager_config_src": str(rendered), "alertmanager_smtp_password": "smtp-secret-1"}
    refused_without_password_then_converged(ansible, inventory, "alertmanager", variables,
                                            check_task="Check that the web password is set from a secret",
                                            password_var="alertmanager_web_password", password=ALERTMANAGER_PASSWORD)

    folder = "/etc/mlops-assets/alertmanager"
    files = hosts.exec("monitoring", f"cd {folder} && stat -c '%n %a %u:%g' alertmanager.yml smtp_password web.yml").stdout
    assert files.split("\n")[:3] == [f"{name} 640 0:65534" for name in ("alertmanager.yml", "smtp_password", "web.yml")]
    assert hosts.exec("monitoring", f"cat {folder}/alertmanager.yml").stdout == rendered.read_text()
    assert ALERTMANAGER_PASSWORD not in hosts.exec("monitoring", f"cat {folder}/web.yml").stdout
    alertmanager = f"http://{hosts.address('monitoring')}:9093"
    auth = ("admin", ALERTMANAGER_PASSWORD)
    assert http_status(f"{alertmanager}/api/v2/status") == 401
    assert http_status(f"{alertmanager}/-/ready", auth=("admin", "wrong-password-1")) == 401
    _, status = http_json(f"{alertmanager}/api/v2/status", auth=auth)
    assert "mlops-critical" in status["config"]["original"] and status["cluster"]["status"] == "disabled"

    # Without a rendered file (before the first `dashboards`): the role's own, delivering nowhere.
    again = ansible.run_playbook(inventory, "tests/alertmanager.yml", extra_vars={**variables, "alertmanager_config_src": ""})
    assert again.per_host["monitoring"]["changed"] >= 1
    _, status = http_json(f"{alertmanager}/api/v2/status", auth=auth)
    assert "mlops-critical" not in status["config"]["original"] and "receiver: \"null\"" in status["config"]["original"]


def test_grafana_role_renders_its_configuration(hosts, ansible, inventory, tmp_path):
    rendered = rendered_monitoring_files(tmp_path)
    dashboards = sorted(p.name for p in (rendered / "dashboards").glob("*.json"))
    variables = {"grafana_render_only": True, "grafana_admin_password": GRAFANA_PASSWORD,
                 "prometheus_web_password": PROMETHEUS_PASSWORD,
                 "grafana_dashboards_src_dir": str(rendered / "dashboards")}

    with pytest.raises(AnsibleError) as failure:  # no password: a clear refusal, nothing written
        ansible.run_playbook(inventory, "tests/grafana.yml", extra_vars={"grafana_render_only": True})
    assert "monitoring failed at task 'Check that the admin password is set from a secret'" in str(failure.value)
    assert hosts.exec("monitoring", "test -e /etc/mlops-assets/grafana/grafana.ini", check=False).returncode == 1

    converge_twice(ansible, inventory, "tests/grafana.yml", "grafana", **variables)
    base = "/etc/mlops-assets/grafana"
    ini = hosts.exec("monitoring", f"cat {base}/grafana.ini").stdout
    assert "[auth.anonymous]\nenabled = false" in ini
    assert "allow_sign_up = false" in ini
    assert "admin_password = $__file{/etc/grafana/admin_password}" in ini
    assert GRAFANA_PASSWORD not in ini
    assert "cookie_secure = false" in ini  # plain HTTP: a Secure cookie would never come back
    secret = hosts.exec("monitoring", f"stat -c '%a %u' {base}/admin_password; cat {base}/admin_password").stdout
    assert secret.splitlines() == ["400 472", GRAFANA_PASSWORD]
    datasource = hosts.exec("monitoring", f"cat {base}/provisioning/datasources/mlops-assets.yaml").stdout
    assert f'url: "http://{hosts.address("monitoring")}:9090"' in datasource
    assert 'uid: "mlops-prometheus"' in datasource
    # The datasource passes Prometheus's basic auth; the file is Grafana's group's only.
    assert 'basicAuth: true' in datasource and 'basicAuthUser: "admin"' in datasource
    assert f'basicAuthPassword: "{PROMETHEUS_PASSWORD}"' in datasource
    assert hosts.exec("monitoring", f"stat -c '%a %g' {base}/provisioning/datasources/mlops-assets.yaml").stdout.split() == ["640", "472"]
    provider = hosts.exec("monitoring", f"cat {base}/provisioning/dashboards/mlops-assets.yaml").stdout
    assert "path: /var/lib/grafana/dashboards/mlops-assets" in provider
    assert sorted(hosts.exec("monitoring", f"ls {base}/dashboards").stdout.split()) == dashboards
    # Render only: no Grafana container, no image was asked for.
    assert "grafana" not in hosts.exec("monitoring", "docker ps -a --format '{{.Names}}'").stdout

    # Behind a TLS proxy (an https root URL), Grafana's cookies are Secure.
    ansible.run_playbook(inventory, "tests/grafana.yml",
                         extra_vars={**variables, "grafana_root_url": "https://grafana.example.org/"})
    ini = hosts.exec("monitoring", f"cat {base}/grafana.ini").stdout
    assert "cookie_secure = true" in ini and "root_url = https://grafana.example.org/" in ini


def _moto_s3(address: str, log_file: Path):
    """moto's server on the test bridge's address (what the namespace hosts reach), a free port."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", address, "-p", str(port)],
                               stdout=open(log_file, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://{address}:{port}", time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
            return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"moto_server did not answer on {url}; see {log_file}")


def run_with_events(ansible, inventory, playbook: str, extra_vars: dict):
    """Run a playbook; also return each task's results from the run's events (what a caller
    such as a Dagster job reads, e.g. the backup's key), by task name."""
    before = set(Path(ansible.work_dir).glob("run-*"))
    result = ansible.run_playbook(inventory, playbook, extra_vars=extra_vars)
    (run_dir,) = set(Path(ansible.work_dir).glob("run-*")) - before
    events: dict[str, list[dict]] = {}
    for path in sorted(run_dir.glob("artifacts/*/job_events/*.json")):
        event = json.loads(path.read_text())
        if event.get("event") == "runner_on_ok":
            events.setdefault(event["event_data"].get("task", ""), []).append(event["event_data"].get("res", {}))
    return result, events


def test_tracking_server_role_on_postgres_with_s3_artifacts(hosts, ansible, inventory, engine, tmp_path, monkeypatch):
    """The MLflow tracking server on the monitoring host: PostgreSQL beside it (not published),
    artifacts proxied into an S3 bucket (moto's, on the control machine), basic auth; a client
    with credentials logs a run and an artifact, which survive a PostgreSQL restart; the
    databases are backed up to the bucket (the newest N kept) and restored after a loss."""
    import boto3
    import mlflow
    from mlflow.server import get_app_client

    from mlops_assets.image.tracking_server import build_postgres_image, build_tracking_server_image
    from mlops_assets.rehearsal.images import save_archive

    started = time.monotonic()
    images = {"tracking_server": build_tracking_server_image(engine), "tracking_server_postgres": build_postgres_image(engine)}
    variables = {}
    for prefix, image in images.items():
        repository, tag = image.reference.rsplit(":", 1)
        variables.update({f"{prefix}_image_source": "archive", f"{prefix}_image_repository": repository,
                          f"{prefix}_image_tag": tag, f"{prefix}_image_archive": str(save_archive(engine, image.reference))})
    TIMINGS["tracking_server_images_s"] = round(time.monotonic() - started, 2)
    TIMINGS["tracking_server_image_mb"] = round(images["tracking_server"].size_bytes / 1e6)
    TIMINGS["tracking_postgres_image_mb"] = round(images["tracking_server_postgres"].size_bytes / 1e6)

    moto, s3_url = _moto_s3(hosts.bridge_address, tmp_path / "moto.log")
    try:
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="rehearsal",
                          aws_secret_access_key="rehearsal-secret")
        s3.create_bucket(Bucket="mlflow-artifacts")
        variables.update({"tracking_server_s3_bucket": "mlflow-artifacts", "tracking_server_s3_prefix": "team",
                          "tracking_server_s3_endpoint_url": s3_url, "tracking_server_s3_region": "us-east-1",
                          "tracking_server_s3_access_key_id": "rehearsal",
                          "tracking_server_s3_secret_access_key": "rehearsal-secret",
                          "tracking_server_workers": 1})
        with pytest.raises(AnsibleError) as failure:  # no secrets: a clear refusal
            ansible.run_playbook(inventory, "tests/tracking_server.yml", extra_vars=variables)
        assert "monitoring failed at task 'Check that the admin and database passwords are set from secrets'" in str(failure.value)
        variables.update({"tracking_server_admin_password": TRACKING_ADMIN_PASSWORD,
                          "tracking_server_postgres_password": TRACKING_POSTGRES_PASSWORD})
        converge_twice(ansible, inventory, "tests/tracking_server.yml", "tracking_server", **variables)

        server = f"http://{hosts.address('monitoring')}:5000"
        search = f"{server}/api/2.0/mlflow/experiments/search?max_results=1"
        assert http_status(search) == 401
        assert http_status(search, auth=("admin", "wrong-password-1")) == 401
        assert http_status(search, auth=("admin", TRACKING_ADMIN_PASSWORD)) == 200
        # PostgreSQL is on the containers' network only; no secret in either container's config.
        for name in ("mlflow-postgres", "mlflow-tracking"):
            config = json.loads(hosts.exec("monitoring", f"docker inspect {name}").stdout)[0]
            assert config["HostConfig"]["NetworkMode"] == "mlflow-tracking"
            for secret in (TRACKING_ADMIN_PASSWORD, TRACKING_POSTGRES_PASSWORD, "rehearsal-secret"):
                assert secret not in json.dumps(config), f"a secret in {name}'s container config"
            if name == "mlflow-postgres":
                assert not config["HostConfig"]["PortBindings"] and config["Config"]["User"] == "999"
        assert hosts.exec("monitoring", "ss -ltn | grep -c ':5432 '", check=False).stdout.strip() == "0"
        modes = hosts.exec("monitoring", "cd /etc/mlops-assets/tracking-server && stat -c '%n %a %u' "
                                         "postgres/password server/pgpass server/basic_auth.ini server/s3_credentials "
                                         "server/flask_secret_key").stdout
        assert modes.split("\n")[:5] == ["postgres/password 400 999", "server/pgpass 400 10002",
                                         "server/basic_auth.ini 400 10002", "server/s3_credentials 400 10002",
                                         "server/flask_secret_key 400 10002"], modes

        # The MLflow client on the control machine, with basic-auth credentials and no S3 ones.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", TRACKING_ADMIN_PASSWORD)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
            monkeypatch.delenv(name, raising=False)
        started = time.monotonic()
        # The registry too: an earlier test of this process may have left MLflow's global registry URI set.
        client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
        experiment_id = client.create_experiment(f"role-test-{os.urandom(4).hex()}")
        run = client.create_run(experiment_id)
        artifact = tmp_path / "hello.txt"
        artifact.write_text("logged through the tracking server\n")
        client.log_artifact(run.info.run_id, str(artifact))
        client.log_metric(run.info.run_id, "accuracy", 0.97)
        client.set_terminated(run.info.run_id)
        TIMINGS["tracking_server_client_s"] = round(time.monotonic() - started, 2)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])]
        assert f"team/{experiment_id}/{run.info.run_id}/artifacts/hello.txt" in keys, keys
        body = s3.get_object(Bucket="mlflow-artifacts", Key=f"team/{experiment_id}/{run.info.run_id}/artifacts/hello.txt")["Body"]
        assert body.read() == artifact.read_bytes()

        # PostgreSQL restarted: the run is still listed once the server answers again.
        started = time.monotonic()
        hosts.exec("monitoring", "docker restart mlflow-postgres")
        deadline, listed, last = time.monotonic() + 90, [], None
        while time.monotonic() < deadline:
            try:
                listed = [r.info.run_id for r in client.search_runs([experiment_id])]
                if run.info.run_id in listed:
                    break
            except Exception as exc:  # the server's pool reconnecting: retried
                last = exc
            time.sleep(1)
        TIMINGS["tracking_server_postgres_restart_s"] = round(time.monotonic() - started, 2)
        assert run.info.run_id in listed, f"the run is not listed after PostgreSQL's restart (last error: {last})"
        assert client.get_run(run.info.run_id).data.metrics == {"accuracy": 0.97}
        downloaded = client.download_artifacts(run.info.run_id, "hello.txt", str(tmp_path / "download"))
        assert Path(downloaded).read_bytes() == artifact.read_bytes()

        # New passwords: MLflow and initdb apply theirs only when they create the user, so the
        # role rotates both (MLflow's update-password API, ALTER ROLE); the old one is refused.
        started = time.monotonic()
        new_admin, new_postgres = TRACKING_ADMIN_PASSWORD + "-new", TRACKING_POSTGRES_PASSWORD + "-new"
        rotated = ansible.run_playbook(inventory, "tests/tracking_server.yml", extra_vars={
            **variables, "tracking_server_admin_password": new_admin, "tracking_server_postgres_password": new_postgres})
        TIMINGS["tracking_server_rotation_s"] = round(time.monotonic() - started, 2)
        assert rotated.per_host["monitoring"]["changed"] >= 1
        assert http_status(search, auth=("admin", TRACKING_ADMIN_PASSWORD)) == 401
        assert http_status(search, auth=("admin", new_admin)) == 200
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", new_admin)
        # The server restarted with the new database password and still reads the store.
        assert run.info.run_id in [r.info.run_id for r in client.search_runs([experiment_id])]
        again = ansible.run_playbook(inventory, "tests/tracking_server.yml", extra_vars={
            **variables, "tracking_server_admin_password": new_admin, "tracking_server_postgres_password": new_postgres})
        assert again.per_host["monitoring"]["changed"] == 0, again.per_host

        # Backups: a model version of the run with the alias `champion` and a second user (the
        # auth database), then two backups keeping 1. The playbook needs no variable: it
        # takes the bucket and the S3 settings from the running server.
        model = f"role-test-model-{os.urandom(4).hex()}"
        client.create_registered_model(model)
        version = client.create_model_version(model, source=f"runs:/{run.info.run_id}/hello.txt", run_id=run.info.run_id)
        client.set_registered_model_alias(model, "champion", version.version)
        users = get_app_client("basic-auth", tracking_uri=server)
        analyst_password = "analyst-" + os.urandom(8).hex()
        users.create_user("analyst", analyst_password)
        # Something else under the prefix: never counted nor pruned.
        s3.put_object(Bucket="mlflow-artifacts", Key="backups/README.txt", Body=b"not a backup")
        started, keys = time.monotonic(), []
        for _ in range(2):
            backup, events = run_with_events(ansible, inventory, "tracking_backup.yml", {"tracking_server_backup_keep": 1})
            assert backup.per_host["monitoring"]["changed"] >= 1, backup.per_host
            keys += [res["tracking_server_backup_key"] for res in events.get("Report the backup's key", [])]
        TIMINGS["tracking_server_backup_s"] = round((time.monotonic() - started) / 2, 2)
        assert len(keys) == 2 and len(set(keys)) == 2, keys  # one key per run, none overwritten
        assert all(re.fullmatch(r"backups/mlflow-\d{8}T\d{6}Z\.tar", key) for key in keys), keys
        assert keys == sorted(keys), keys
        stored = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="mlflow-artifacts", Prefix="backups/").get("Contents", []))
        assert stored == ["backups/README.txt", keys[-1]], stored  # the newest one, the older pruned
        assert hosts.exec("monitoring", "stat -c '%a %u' /var/lib/mlops-assets/tracking-server/backups && "
                                        "ls -A /var/lib/mlops-assets/tracking-server/backups").stdout.split() == ["700", "0"]
        with tarfile.open(fileobj=s3.get_object(Bucket="mlflow-artifacts", Key=keys[-1])["Body"], mode="r|") as archive:
            assert sorted(member.name for member in archive) == ["auth.dump", "tracking.dump"]

        # The data lost: the model and its alias, the run, the second user.
        client.delete_registered_model(model)
        client.delete_run(run.info.run_id)
        users.delete_user("analyst")
        assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
        assert http_status(search, auth=("analyst", analyst_password)) == 401
        # A key that is not there: refused before anything changes, naming the variable; the
        # server was not stopped.
        server_started = hosts.exec("monitoring", "docker inspect -f '{{.State.StartedAt}}' mlflow-tracking").stdout
        with pytest.raises(AnsibleError) as failure:
            ansible.run_playbook(inventory, "tracking_restore.yml",
                                 extra_vars={"tracking_server_restore_key": "backups/mlflow-20000101T000000Z.tar"})
        assert "tracking_server_restore_key=backups/mlflow-20000101T000000Z.tar: no such backup" in str(failure.value)
        assert hosts.exec("monitoring", "docker inspect -f '{{.State.StartedAt}}' mlflow-tracking").stdout == server_started
        assert http_status(search, auth=("admin", new_admin)) == 200
        assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"

        # Restore the newest backup: the alias, the run with its metric and both users are back.
        started = time.monotonic()
        restored, events = run_with_events(ansible, inventory, "tracking_restore.yml", {})
        TIMINGS["tracking_server_restore_s"] = round(time.monotonic() - started, 2)
        assert restored.per_host["monitoring"]["changed"] >= 1, restored.per_host
        assert keys[-1] in events["Report the restored backup"][0]["msg"], events["Report the restored backup"]
        assert client.get_model_version_by_alias(model, "champion").version == version.version
        back = client.get_run(run.info.run_id)
        assert back.info.lifecycle_stage == "active" and back.data.metrics == {"accuracy": 0.97}
        assert http_status(search, auth=("admin", new_admin)) == 200
        assert http_status(search, auth=("analyst", analyst_password)) == 200
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def test_unreachable_host_is_named_with_its_task(hosts, ansible):
    """An address of the test subnet where no host answers: the failure names it."""
    ghost = str(hosts.subnet[99])
    inventory = {"all": {"vars": {"ansible_user": "admin"}, "children": {"api": {"hosts": {"ghost": {"ansible_host": ghost}}}}}}
    with pytest.raises(AnsibleError) as failure:
        ansible.run_playbook(inventory, "tests/docker.yml", extra_vars={"ansible_ssh_timeout": 3})
    assert "ghost unreachable at task 'Gathering Facts'" in str(failure.value)
    assert failure.value.result.per_host["ghost"]["unreachable"] == 1
    assert not list(Path(ansible.work_dir).glob("run-*/env/extravars"))  # extra vars (secrets) not left behind

