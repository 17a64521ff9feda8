"""The offline rehearsal of the `aws` target, end to end through Dagster (`MLOPS_TARGET=sim`).

From scratch (a fresh MLOPS_HOME): `python -m mlops_assets.cli run` (what `make run` calls)
materializes the whole graph: dataset -> candidate_models -> selected_model -> container_image
(built with podman, saved as an archive); tofu_state (infra_tf/ applied to the EC2 emulator
through the provider test double) -> deployed_hosts (test hosts at the instances' private
addresses, Ansible over real SSH: Docker and node_exporter on both, Prometheus, Alertmanager
and the Pushgateway from locally built images, Grafana rendered only) -> deployed_api (the image shipped to the api host and run by the `api` role)
-> dashboards (rules, dashboards and Alertmanager's routes provisioned on the monitoring host).

Then: a prediction through the api host's address answers like the pipeline's champion;
Prometheus on the monitoring host has the api target up and served-prediction series, every
panel of the hosts dashboard returns data for each of the two hosts (node_exporter on both),
and the pipeline's metrics pushed to the monitoring host's Pushgateway; the API container
stopped, MlopsApiTargetDown reaches a webhook receiver the test runs on the monitoring host
(its `for:` and Alertmanager's waits shortened by MLOPS_ALERT_TIMINGS), and started again, the
resolved notice arrives too. The
lazy-rebuild scenarios follow, each one `cli run`: no change (only the live-service checks
run, and they find everything in place: no build, no Ansible, the container not restarted);
new hyperparameters (retraining, the champion stays, nothing downstream rebuilds); a serving
code change (a new image deployed by the api role, no retraining); new data with a better
model (the whole chain, and the api host serves the new version); a crash on the api host
(the API container and then its engine SIGKILLed: the next run starts the engine again and
the API comes back); a new image that never becomes ready (the api role starts the one that
ran before again). A materialization of
everything (`run --all`) then applies nothing, builds nothing, and Ansible changes nothing on
any host. Then a second API host (TF_VAR_api_instance_count=2 and `cli run`): one Ray cluster
across both, each answering with replicas of both nodes, and back to one host. `make down`'s code path (`cli down`) destroys the emulated infrastructure, removes
the hosts and stops the emulator: nothing is left behind.

Needs root (namespaces, bridges, podman); CI runs as root, so it runs there. Phase times are
printed at the end.
"""

import base64
import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mlops_assets.settings import PROJECT_ROOT
from mlops_assets_tests.lazy_stack import images_built_in, remove_images

pytestmark = [pytest.mark.stack, pytest.mark.root, pytest.mark.second_lane]

PHASES: dict[str, float] = {}
# Docker's default bridge address inside the monitoring host, and a free port there.
RECEIVER_ADDRESS, RECEIVER_PORT = "172.17.0.1", 9097
ASSETS = ["dataset", "tracking_server", "candidate_models", "selected_model", "container_image", "tofu_state",
          "deployed_hosts", "deployed_api", "dashboards"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLOPS_DATASET", "MLOPS_TARGET_COLUMN")}
    env.update(MLOPS_HOME=str(home), MLOPS_TARGET="sim", DAGSTER_HOME=str(home / "dagster"), PYTHONUNBUFFERED="1")
    if (home / "dataset").exists():
        env["MLOPS_DATASET"] = str(home / (home / "dataset").read_text())
    from mlops_assets.rehearsal.engine import docker_host

    env["DOCKER_HOST"] = docker_host()  # Podman set up when no engine answers (scripts/setup_podman.sh)
    # Alertmanager on the monitoring host delivers to the receiver that
    # test_a_stopped_api_fires_target_down_at_a_webhook_and_its_start_resolves_it runs there, on
    # the host's Docker bridge (reachable from its containers only); every run renders the same.
    env.update(MLOPS_ALERT_WEBHOOK_URL=f"http://{RECEIVER_ADDRESS}:{RECEIVER_PORT}/alerts",
               MLOPS_ALERT_TIMINGS="group_wait=2s,group_interval=5s,target_down_for=15s")
    return env


# The first dataset has its two most telling columns made constant: a weak champion (under a
# lowered quality floor), which the full dataset's model later beats (scenario "new data").
FLOOR_CONFIG = "ops:\n  selected_model:\n    config:\n      quality_floor: 0.5\n"
DATASETS = {"weak": "penguins-weak.csv", "full": "penguins.csv"}


def _write_datasets(home: Path) -> None:
    import polars as pl

    from mlops_assets.ml.data import _read_palmerpenguins

    penguins = _read_palmerpenguins()
    penguins.write_csv(home / DATASETS["full"])
    penguins.with_columns(pl.lit(45.0).alias("bill_length_mm"), pl.lit(200.0).alias("flipper_length_mm")).write_csv(
        home / DATASETS["weak"]
    )
    (home / "dataset").write_text(DATASETS["weak"])  # which one the runs use, until a scenario changes it


def _run_config(home: Path, name: str, text: str) -> Path:
    path = home / f"run-config-{name}.yaml"
    path.write_text(text)
    return path


def _cli(home: Path, *args: str, timeout: float = 1500, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI with its output streamed to a log file in `home` (lazy_stack.run_cli)."""
    from mlops_assets_tests.lazy_stack import run_cli

    returncode, output = run_cli(args, PROJECT_ROOT, {**_env(home), **(env or {})}, home, timeout)
    return subprocess.CompletedProcess(args, returncode, stdout=output, stderr="")


def _tail(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if " - DEBUG - " not in line]
    return "\n".join(lines[-60:])


def _latest(home: Path) -> dict[str, tuple[str, dict]]:
    """asset -> (run id, metadata values) of its latest materialization."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        found = {}
        for name in ASSETS:
            event = instance.get_latest_materialization_event(dg.AssetKey(name))
            if event is not None:
                metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
                found[name] = (event.run_id, metadata)
        return found


def _api_check(home: Path, run_id: str) -> dict:
    """The `deployed_api` check's evaluation in run `run_id`: passed, description, metadata."""
    import dagster as dg

    key = dg.AssetCheckKey(dg.AssetKey("deployed_api"), "serves_its_version_on_every_host")
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    evaluation = record.event.dagster_event.event_specific_data
    assert record.run_id == run_id, f"the check last ran in {record.run_id}, not with deployed_api in {run_id}"
    return {"passed": evaluation.passed, "description": evaluation.description,
            **{k: v.value for k, v in evaluation.metadata.items()}}


def _get_json(url: str, data=None, timeout: float = 30, auth: tuple[str, str] | None = None, method: str | None = None):
    body = json.dumps(data).encode() if data is not None else None
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _prometheus_auth(home: Path) -> tuple[str, str]:
    """The monitoring host's Prometheus basic auth: the rehearsal's generated password."""
    return ("admin", (home / "rehearsal" / "secrets" / "prometheus_web_password").read_text().strip())


def _query(prometheus: str, promql: str, auth: tuple[str, str]) -> list[dict]:
    answer = _get_json(f"{prometheus}/api/v1/query?query={urllib.parse.quote(promql)}", auth=auth)
    return answer["data"]["result"]


def _engine(action):
    from mlops_assets.rehearsal.engine import docker_client

    client = docker_client()
    try:
        return action(client)
    finally:
        client.close()


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The first materialization from scratch; teardown (cli down) at the end, whatever happens."""
    from mlops_assets.rehearsal.hosts import TestHosts
    from mlops_assets.rehearsal.sim_hosts import teardown_sim

    home = tmp_path_factory.mktemp("sim-home")
    _write_datasets(home)
    started = time.monotonic()
    first = _cli(home, "run", "--config", str(_run_config(home, "floor", FLOOR_CONFIG)))
    PHASES["1 first materialization (from scratch)"] = round(time.monotonic() - started, 1)
    hosts_state = home / "rehearsal" / "hosts.json"
    hosts = TestHosts.attach(hosts_state) if hosts_state.exists() else None
    state = {"home": home, "first": first, "hosts": hosts, "down": None}
    try:
        yield state
    finally:
        if state["down"] is None:  # a failure before the teardown test: clean up anyway
            try:
                _cli(home, "down", timeout=600)
            finally:
                teardown_sim(home)  # the hosts and the emulator, even when `down` failed
        _engine(lambda c: remove_images(c, images_built_in(home)))  # the API images this test built
        (home / "phase-times.json").write_text(json.dumps(PHASES, indent=1))


def test_first_materialization_serves_the_champion_on_the_api_host(rehearsal):
    first = rehearsal["first"]
    assert first.returncode == 0, _tail(first)
    latest = _latest(rehearsal["home"])
    assert set(latest) == set(ASSETS), f"not materialized: {set(ASSETS) - set(latest)}"
    tofu = latest["tofu_state"][1]
    assert tofu["applied"] is True
    api_address = tofu["ansible_inventory"]["all"]["children"]["api"]["hosts"]["mlops-assets-api"]["ansible_host"]
    # The api host runs the image container_image produced for this run, shipped as its archive.
    image = latest["container_image"][1]
    assert image["tag"] != "none" and Path(image["archive"]).is_file(), image
    assert Path(image["archive"]).resolve().is_relative_to(rehearsal["home"].resolve())
    running = rehearsal["hosts"].exec("mlops-assets-api", "docker inspect -f '{{.Config.Image}}' mlops-api").stdout.strip()
    assert running.rpartition(":")[2] == image["tag"], (running, image["tag"])
    api = latest["deployed_api"][1]
    assert api["url"].startswith(f"http://{api_address}:8000")
    # deployed_api's check ran after it and found the host answering with that version.
    check = _api_check(rehearsal["home"], latest["deployed_api"][0])
    assert check["passed"] and check["expected_version"] == str(api["model_version"]), check
    PHASES.update({
        "  tofu_state (emulator, init, plan, apply)": tofu["timings (s)"]["total"],
        "  container_image (build + archive)": latest["container_image"][1]["total_seconds"],
        "  deployed_hosts (hosts up + Ansible)": latest["deployed_hosts"][1]["ansible_seconds"],
        "  deployed_api (Ansible api role + smoke)": api["ansible_seconds"],
    })

    from mlops_assets.ml.data import DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec, build_dataset
    from mlops_assets.resources.mlflow_registry import MlflowRegistry

    x_test, _ = build_dataset(DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec()).xy("test")
    rows = x_test.head(20)
    instances = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                 for row in rows.to_dict(orient="records")]
    started = time.monotonic()
    answer = _get_json(f"http://{api_address}:8000/predict", {"instances": instances})
    PHASES["prediction through the api host (20 rows)"] = round(time.monotonic() - started, 3)
    model = answer["model"]
    assert str(model["version"]) == str(api["model_version"])
    # The registry is the tracking server on the monitoring host (its record), nothing local.
    registry = MlflowRegistry(tracking_uri="unused: the server's record replaces it",
                              server_record=str(_tracking_record(rehearsal["home"])))
    expected = [str(v) for v in registry.load_model(f"models:/{model['name']}/{model['version']}").predict(rows)]
    assert answer["predictions"] == expected


def _tracking_record(home: Path) -> Path:
    return home / "ansible" / "sim" / "tracking-server.json"


def _tracking_server(home: Path) -> tuple[str, tuple[str, str]]:
    """The tracking server on the monitoring host: its URL and the pipeline's credentials."""
    record = json.loads(_tracking_record(home).read_text())
    return record["url"], (record["username"], Path(record["password_file"]).read_text().strip())


def _champion_on_server(home: Path) -> str:
    url, auth = _tracking_server(home)
    answer = _get_json(f"{url}/api/2.0/mlflow/registered-models/alias?name=mlops-assets-classifier&alias=champion",
                       auth=auth)
    return str(answer["model_version"]["version"])


def test_training_went_through_the_tracking_server_on_the_monitoring_host(rehearsal):
    """`sim` trains through MLflow on the monitoring host (PostgreSQL beside it, basic auth):
    the candidate runs nested under one training run, the champion alias there, the artifacts
    as objects in the emulated S3 bucket; nothing in a local store."""
    import boto3

    assert rehearsal["first"].returncode == 0, _tail(rehearsal["first"])
    home = rehearsal["home"]
    latest = _latest(home)
    monitoring = latest["tofu_state"][1]["ansible_inventory"]["all"]["children"]["monitoring"]
    address = next(iter(monitoring["hosts"].values()))["ansible_host"]
    url, auth = _tracking_server(home)
    assert url == f"http://{address}:5000" and latest["tracking_server"][1]["store"] == url
    assert not (home / "mlflow" / "mlflow.db").exists(), "a local store was used"
    try:
        _get_json(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
        raise AssertionError("the tracking server answered without credentials")
    except urllib.error.HTTPError as refused:
        assert refused.code == 401
    experiment = _get_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=mlops-assets", auth=auth)
    runs = _get_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment"]["experiment_id"]],
                                                          "max_results": 100}, auth=auth)["runs"]
    parents = {run["info"]["run_id"] for run in runs
               if not any(tag["key"] == "mlflow.parentRunId" for tag in run["data"].get("tags", []))}
    children = [run for run in runs if any(tag["key"] == "mlflow.parentRunId" and tag["value"] in parents
                                           for tag in run["data"].get("tags", []))]
    assert len(parents) == 1 and len(children) >= 3, (len(parents), len(children))
    selected = latest["selected_model"][1]
    assert _champion_on_server(home) == str(selected["champion_version"])
    # The artifacts went through the server into the bucket OpenTofu created in the emulator.
    emulator = json.loads((home / "rehearsal" / "emulator" / "emulator.json").read_text())
    s3 = boto3.client("s3", endpoint_url=emulator["endpoint"], region_name=emulator["region"],
                      aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")
    bucket = latest["tofu_state"][1]["ansible_inventory"]["all"]["children"]["monitoring"]["vars"]["mlflow_artifact_bucket"]
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    assert any(key.startswith("mlflow-artifacts/") and key.endswith("/MLmodel") for key in keys), keys[:20]
    PHASES["  tracking_server (images, Ansible, reach)"] = latest["tracking_server"][1]["ansible_seconds"]


def test_prometheus_on_the_monitoring_host_scrapes_the_api(rehearsal):
    assert rehearsal["first"].returncode == 0, _tail(rehearsal["first"])
    latest = _latest(rehearsal["home"])
    inventory = latest["tofu_state"][1]["ansible_inventory"]["all"]["children"]
    api_address = inventory["api"]["hosts"]["mlops-assets-api"]["ansible_host"]
    monitoring_address = inventory["monitoring"]["hosts"]["mlops-assets-monitoring"]["ansible_host"]
    prometheus = f"http://{monitoring_address}:9090"
    assert latest["dashboards"][1]["prometheus_url"].startswith(prometheus)
    auth = _prometheus_auth(rehearsal["home"])
    with pytest.raises(urllib.error.HTTPError) as refused:  # basic auth on the monitoring host's Prometheus
        _get_json(f"{prometheus}/api/v1/query?query=up")
    assert refused.value.code == 401
    started = time.monotonic()
    deadline, up, served = started + 120, [], []
    while time.monotonic() < deadline:
        up = _query(prometheus, 'up{job="mlops-api"}', auth)
        served = _query(prometheus, "ray_mlops_api_predictions_total", auth)
        if up and up[0]["value"][1] == "1" and served:
            break
        time.sleep(2)
    PHASES["wait for served-prediction series in Prometheus"] = round(time.monotonic() - started, 1)
    assert up and up[0]["value"][1] == "1", f"the api target is not up: {up}"
    assert up[0]["metric"]["instance"] == f"{api_address}:8080"
    assert served, "no ray_mlops_api_predictions_total series on the monitoring host's Prometheus"
    rules = _get_json(f"{prometheus}/api/v1/rules", auth=auth)["data"]["groups"]
    assert sum(len(g["rules"]) for g in rules) == latest["dashboards"][1]["rule_count"]
    # What the drift sensor reads, pointed at the monitoring host, passes the same basic auth.
    from mlops_assets.settings import load_settings
    from mlops_assets.targets import resources_for

    sensor_api = resources_for(load_settings({**_env(rehearsal["home"]), "MLOPS_PROMETHEUS_URL": prometheus}))["prometheus_api"]
    assert sensor_api.vector('up{job="mlops-api"}')[0][1] == 1.0
    # Grafana, render only: its configuration and the rendered dashboards are on the host, no container.
    hosts, grafana = rehearsal["hosts"], "/etc/mlops-assets/grafana"
    rendered = sorted(p.name for p in (rehearsal["home"] / "monitoring" / "dashboards").glob("*.json"))
    assert rendered and hosts.exec("mlops-assets-monitoring", f"ls {grafana}/dashboards").stdout.split() == rendered
    assert "[auth.anonymous]\nenabled = false" in hosts.exec("mlops-assets-monitoring", f"cat {grafana}/grafana.ini").stdout
    assert sorted(hosts.exec("mlops-assets-monitoring", "docker ps -a --format '{{.Names}}'").stdout.split()) == [
        "alertmanager", "mlflow-postgres", "mlflow-tracking", "node-exporter", "prometheus", "pushgateway"]


def _monitoring_prometheus(rehearsal) -> tuple[str, tuple[str, str], dict]:
    """The monitoring host's Prometheus URL, its basic auth and the inventory's groups."""
    inventory = _latest(rehearsal["home"])["tofu_state"][1]["ansible_inventory"]["all"]["children"]
    monitoring_address = inventory["monitoring"]["hosts"]["mlops-assets-monitoring"]["ansible_host"]
    return f"http://{monitoring_address}:9090", _prometheus_auth(rehearsal["home"]), inventory


def _panels_without_data(prometheus: str, auth, dashboard: str, home: Path, instances: set[str] = frozenset()) -> list[str]:
    """The panels of a rendered dashboard whose queries return nothing (or, where a query splits
    by instance, nothing for one of `instances`), run against the monitoring host's Prometheus;
    $__rate_interval as Grafana makes it of a 15 s scrape interval."""
    from mlops_assets.monitoring.panels import panel_queries

    empty = []
    for title, expr in panel_queries(json.loads((home / "monitoring" / "dashboards" / dashboard).read_text()), "1m"):
        result = _query(prometheus, expr, auth)
        found = {r["metric"]["instance"] for r in result if "instance" in r["metric"]}
        if not result or (found and not instances <= found):
            empty.append(f"{title}: {expr} -> {sorted(found) or len(result)}")
    return empty


def test_the_hosts_dashboard_shows_both_hosts_and_the_pipeline_pushes_to_the_monitoring_host(rehearsal):
    """node_exporter on both hosts, scraped at their private addresses (job `node`): every panel
    of `mlops-hosts` returns data for each host. The materializations from deployed_hosts on
    pushed to the monitoring host's Pushgateway, which that Prometheus scrapes with honor_labels."""
    assert rehearsal["first"].returncode == 0, _tail(rehearsal["first"])
    prometheus, auth, inventory = _monitoring_prometheus(rehearsal)
    nodes = {f"{host['private_ip']}:9100" for group in inventory.values() for host in group["hosts"].values()}
    assert len(nodes) == 2
    started = time.monotonic()
    deadline, empty, pushed = started + 60, ["not run"], set()
    while time.monotonic() < deadline:
        empty = _panels_without_data(prometheus, auth, "mlops-hosts.json", rehearsal["home"], nodes)
        pushed = {(r["metric"]["job"], r["metric"]["asset"], r["metric"]["target"])
                  for r in _query(prometheus, "mlops_pipeline_asset_last_success_timestamp_seconds > 0", auth)}
        if not empty and {"deployed_hosts", "deployed_api"} <= {asset for _, asset, _ in pushed}:
            break
        time.sleep(2)
    PHASES["wait for both hosts' node_exporter and the pushed pipeline metrics"] = round(time.monotonic() - started, 1)
    assert not empty, f"hosts dashboard panels without data for both hosts {sorted(nodes)}: {empty}"
    assert float(_query(prometheus, 'sum(up{job="node"})', auth)[0]["value"][1]) == 2
    # Pushed from this machine (the admin network) once deployed_hosts had put the gateway up.
    assert {("mlops-pipeline", "deployed_hosts", "sim"), ("mlops-pipeline", "deployed_api", "sim")} <= pushed, pushed


# A webhook receiver for the monitoring host: appends each POSTed body as one JSON line.
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[3], "ab") as log:
            log.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer((sys.argv[1], int(sys.argv[2])), Receiver).serve_forever()
"""


def _notice(hosts, status: str, timeout_s: float) -> tuple[dict, float]:
    """The first notice of MlopsApiTargetDown with `status` the receiver got, and when."""
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        lines = hosts.exec("mlops-assets-monitoring", "cat /tmp/alerts.jsonl 2>/dev/null", check=False).stdout.splitlines()
        for notice in map(json.loads, lines):
            if notice["status"] == status and any(a["labels"]["alertname"] == "MlopsApiTargetDown" for a in notice["alerts"]):
                return notice, round(time.monotonic() - started, 1)
        time.sleep(2)
    log = hosts.exec("mlops-assets-monitoring", "docker logs --tail 20 alertmanager 2>&1", check=False).stdout
    raise AssertionError(f"no {status} MlopsApiTargetDown at the receiver within {timeout_s:.0f}s; Alertmanager's log:\n{log}")


def test_a_stopped_api_fires_target_down_at_a_webhook_and_its_start_resolves_it(rehearsal):
    assert rehearsal["first"].returncode == 0, _tail(rehearsal["first"])
    home, hosts, monitoring, api = rehearsal["home"], rehearsal["hosts"], "mlops-assets-monitoring", "mlops-assets-api"
    latest = _latest(home)
    assert "webhook at" in latest["dashboards"][1]["alert_delivery"]
    inventory = latest["tofu_state"][1]["ansible_inventory"]["all"]["children"]
    address = inventory["monitoring"]["hosts"][monitoring]["ansible_host"]
    api_address = inventory["api"]["hosts"][api]["ansible_host"]
    # Alertmanager answers only with its basic auth (the rehearsal's generated password).
    alertmanager = f"http://{address}:9093"
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get_json(f"{alertmanager}/api/v2/status")
    assert refused.value.code == 401
    password = (home / "rehearsal" / "secrets" / "alertmanager_web_password").read_text().strip()
    assert _get_json(f"{alertmanager}/api/v2/status", auth=("admin", password))["cluster"]["status"] == "disabled"
    assert RECEIVER_ADDRESS in hosts.exec(monitoring, "ip -4 -o addr show docker0").stdout, "Docker's bridge moved"
    hosts.exec(monitoring, "cat > /tmp/alert-receiver.py; rm -f /tmp/alerts.jsonl", input=RECEIVER)
    hosts.exec(monitoring, f"setsid python3 /tmp/alert-receiver.py {RECEIVER_ADDRESS} {RECEIVER_PORT} /tmp/alerts.jsonl "
                           "</dev/null >/tmp/alert-receiver.log 2>&1 & echo $! > /tmp/alert-receiver.pid")
    readyz = latest["deployed_api"][1]["url"].removesuffix("/docs") + "/readyz"
    started = time.monotonic()
    try:
        hosts.exec(api, "docker stop mlops-api")
        firing, fired_after = _notice(hosts, "firing", timeout_s=150)
        hosts.exec(api, "docker start mlops-api")
        resolved, resolved_after = _notice(hosts, "resolved", timeout_s=150)
    finally:
        hosts.exec(api, "docker start mlops-api", check=False)  # whatever failed: the API runs again
        hosts.exec(monitoring, "kill $(cat /tmp/alert-receiver.pid)", check=False)
        PHASES["alert: API stopped -> firing at the webhook -> started -> resolved"] = round(time.monotonic() - started, 1)
    for notice in (firing, resolved):
        assert notice["receiver"] == "mlops-critical", notice
        alert = next(a for a in notice["alerts"] if a["labels"]["alertname"] == "MlopsApiTargetDown")
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["instance"] == f"{api_address}:8080", alert
    PHASES["  firing delivered after the stop / resolved after the start (s)"] = f"{fired_after} / {resolved_after}"
    # The next scenarios find the API as it was deployed: ready with the champion.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if str(_get_json(readyz, timeout=5)["model"]["version"]) == str(latest["deployed_api"][1]["model_version"]):
                break
        except (OSError, ValueError):
            pass
        time.sleep(2)
    else:
        raise AssertionError(f"{readyz} not ready again within 120 s of `docker start`")


LIVE_SERVICE_CHECKS = {"container_image", "deployed_api", "dashboards"}


def _scenario(rehearsal, name: str, *args: str, env: dict[str, str] | None = None) -> tuple[set[str], dict]:
    """One `cli run ARGS`: the assets it materialized and the latest metadata of each."""
    assert rehearsal["first"].returncode == 0, _tail(rehearsal["first"])
    home = rehearsal["home"]
    before = _latest(home)
    started = time.monotonic()
    run = _cli(home, "run", *args, env=env)
    PHASES[name] = round(time.monotonic() - started, 1)
    assert run.returncode == 0, _tail(run)
    after = _latest(home)
    materialized = {asset for asset in ASSETS if after[asset][0] != before[asset][0]}
    PHASES[name] = f"{PHASES[name]} s: {', '.join(sorted(materialized)) or '-'}"
    return materialized, {asset: meta for asset, (_, meta) in after.items()}


def _api_started_at(rehearsal) -> str:
    """When the api host's container started (a restart changes it)."""
    return rehearsal["hosts"].exec("mlops-assets-api", "docker inspect -f '{{.State.StartedAt}}' mlops-api").stdout.strip()


def test_no_change_runs_only_the_live_service_checks_and_they_touch_nothing(rehearsal):
    started_at = _api_started_at(rehearsal)
    materialized, latest = _scenario(rehearsal, "2 no change (make run)")
    assert materialized <= LIVE_SERVICE_CHECKS, materialized
    assert latest["container_image"]["rebuilt"] is False and latest["container_image"]["model_downloaded"] is False
    # Same image, same hosts, the API ready with that version: no Ansible run at all.
    assert latest["deployed_api"]["ansible_seconds"] == 0 and latest["deployed_api"]["changed"] == 0
    assert latest["dashboards"]["provisioned_by"].startswith("unchanged")
    assert _api_started_at(rehearsal) == started_at


def test_new_hyperparameters_retrain_and_nothing_downstream_rebuilds(rehearsal):
    started_at = _api_started_at(rehearsal)
    image = _latest(rehearsal["home"])["container_image"][1]["tag"]
    config = _run_config(rehearsal["home"], "hyperparameters",
                         "ops:\n  candidate_models:\n    config:\n      random_forest:\n        n_estimators: 60\n"
                         "  selected_model:\n    config:\n      quality_floor: 0.5\n")
    materialized, latest = _scenario(rehearsal, "3 new hyperparameters (champion stays)", "--config", str(config))
    assert {"candidate_models", "selected_model"} <= materialized
    assert latest["selected_model"]["promoted"] is False
    assert not materialized & {"dataset", "tofu_state", "deployed_hosts"}
    assert latest["container_image"]["tag"] == image and latest["container_image"]["rebuilt"] is False
    assert latest["deployed_api"]["ansible_seconds"] == 0
    assert _api_started_at(rehearsal) == started_at


def test_serving_code_change_rebuilds_the_image_and_redeploys_without_retraining(rehearsal, tmp_path):
    from mlops_assets.image import context as image_context

    image = _latest(rehearsal["home"])["container_image"][1]["tag"]
    serving_copy = tmp_path / "serving"
    shutil.copytree(image_context.SERVING_DIR, serving_copy, ignore=shutil.ignore_patterns("__pycache__"))
    (serving_copy / "app.py").write_text((serving_copy / "app.py").read_text() + "\n# a change to the serving code\n")
    config = _run_config(rehearsal["home"], "serving",
                         f"ops:\n  container_image:\n    config:\n      serving_dir: {serving_copy}\n")
    materialized, latest = _scenario(rehearsal, "4 serving code changed (image + deployment)", "--config", str(config))
    assert {"container_image", "deployed_api"} <= materialized
    assert not materialized & {"dataset", "candidate_models", "selected_model", "tofu_state", "deployed_hosts"}
    assert latest["container_image"]["rebuilt"] is True and latest["container_image"]["tag"] != image
    assert latest["deployed_api"]["image"].endswith(latest["container_image"]["tag"])
    assert latest["deployed_api"]["changed"] > 0  # the api role replaced the container


def test_new_data_with_a_better_model_rebuilds_the_chain_and_the_api_host_serves_it(rehearsal):
    before = _latest(rehearsal["home"])["selected_model"][1]["champion_version"]
    (rehearsal["home"] / "dataset").write_text(DATASETS["full"])
    materialized, latest = _scenario(rehearsal, "5 new data, better model (whole chain)")
    assert {"dataset", "candidate_models", "selected_model", "container_image", "deployed_api"} <= materialized
    assert not materialized & {"tofu_state", "deployed_hosts"}
    assert latest["selected_model"]["promoted"] is True, latest["selected_model"]["decision"]
    version = latest["selected_model"]["champion_version"]
    assert version != before
    assert latest["container_image"]["model_version"] == version
    ready = _get_json(latest["deployed_api"]["url"].removesuffix("/docs") + "/readyz")
    assert str(ready["model"]["version"]) == version
    assert _champion_on_server(rehearsal["home"]) == version  # the alias moved on the tracking server


def test_a_backup_of_the_tracking_server_restores_the_champion_after_the_registry_is_lost(rehearsal):
    """`cli backup` dumps the tracking server's databases into the emulated bucket; the
    registered model deleted (the registry lost), `cli restore` brings it back with its
    champion alias, and the next run finds everything in place (no retraining)."""
    home = rehearsal["home"]
    champion = _champion_on_server(home)
    started = time.monotonic()
    backup = _cli(home, "backup", "--keep", "2", timeout=600)
    PHASES["8 backup of the tracking server (cli backup)"] = round(time.monotonic() - started, 1)
    assert backup.returncode == 0, _tail(backup)
    key = json.loads(backup.stdout.rsplit("tracking_backup: ", 1)[1].splitlines()[0])["key"]
    assert re.fullmatch(r"backups/mlflow-\d{8}T\d{6}Z\.tar", key), key
    url, auth = _tracking_server(home)
    _get_json(f"{url}/api/2.0/mlflow/registered-models/delete", {"name": "mlops-assets-classifier"}, auth=auth,
              method="DELETE")
    try:
        _champion_on_server(home)
        raise AssertionError("the registered model is still there")
    except urllib.error.HTTPError as gone:
        assert gone.code == 404
    refused = _cli(home, "restore", "--confirm", "aws", timeout=600)
    assert refused.returncode == 1 and "confirm_target is 'aws' but this is the 'sim' target" in refused.stdout
    started = time.monotonic()
    restore = _cli(home, "restore", "--confirm", "sim", "--key", key, timeout=600)
    PHASES["9 restore of the tracking server (cli restore)"] = round(time.monotonic() - started, 1)
    assert restore.returncode == 0, _tail(restore)
    assert _champion_on_server(home) == champion
    materialized, latest = _scenario(rehearsal, "10 no change after the restore")
    assert materialized <= LIVE_SERVICE_CHECKS, materialized  # nothing retrained: the restored registry is the one trained into
    assert latest["container_image"]["rebuilt"] is False


def _model_versions(home: Path) -> list[tuple[str, str]]:
    url, auth = _tracking_server(home)
    query = urllib.parse.quote("name='mlops-assets-classifier'")
    found = _get_json(f"{url}/api/2.0/mlflow/model-versions/search?filter={query}", auth=auth)
    return sorted((str(v["version"]), v["status"]) for v in found.get("model_versions", []))


def test_postgres_restarted_during_a_retraining_leaves_nothing_half_registered(rehearsal):
    """PostgreSQL on the monitoring host restarted while a retraining writes to the tracking
    server: the run succeeds (MLflow's client retries) or fails naming its step, a run after it
    succeeds, and the registry holds only complete versions, the champion one of them."""
    home = rehearsal["home"]
    url, auth = _tracking_server(home)
    before = _model_versions(home)
    config = _run_config(home, "hyperparameters-2", "ops:\n  candidate_models:\n    config:\n      random_forest:\n"
                                                    "        n_estimators: 70\n  selected_model:\n    config:\n"
                                                    "      quality_floor: 0.5\n")
    from mlops_assets_tests.lazy_stack import run_cli

    started = time.monotonic()
    outcome: dict = {}
    import threading

    worker = threading.Thread(target=lambda: outcome.update(
        zip(("rc", "output"), run_cli(("run", "--config", str(config)), PROJECT_ROOT, _env(home), home, 900))))
    worker.start()
    experiment = _get_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=mlops-assets", auth=auth)
    deadline, running = time.monotonic() + 300, []
    while time.monotonic() < deadline and worker.is_alive() and not running:
        running = _get_json(f"{url}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment["experiment"]["experiment_id"]], "filter": "attributes.status = 'RUNNING'"},
            auth=auth).get("runs", [])
        time.sleep(0.5)
    assert running, "the retraining never opened an MLflow run"
    rehearsal["hosts"].exec("mlops-assets-monitoring", "docker restart mlflow-postgres")
    worker.join(900)
    PHASES["11 retraining with PostgreSQL restarted (s, rc)"] = f"{time.monotonic() - started:.1f}, {outcome['rc']}"
    if outcome["rc"] != 0:  # a clean failure names the step; the next run completes it
        assert "failed step candidate_models" in outcome["output"] or "failed step selected_model" in outcome["output"], \
            outcome["output"][-3000:]
        again = _cli(home, "run", "--config", str(config))
        assert again.returncode == 0, _tail(again)
    after = _model_versions(home)
    assert all(status == "READY" for _, status in after), after
    assert set(before) <= set(after) and len(after) <= len(before) + 1, (before, after)
    assert _champion_on_server(home) in {version for version, _ in after}


def test_a_crashed_engine_and_api_container_on_the_api_host_are_restored_by_the_next_run(rehearsal):
    """The API container and the engine on the api host SIGKILLed (as in a crash, not a
    `docker stop`): one `make run` starts the engine again and the API comes back."""
    hosts = rehearsal["hosts"]
    latest = _latest(rehearsal["home"])
    version = latest["selected_model"][1]["champion_version"]
    readyz = latest["deployed_api"][1]["url"].removesuffix("/docs") + "/readyz"
    # Inside the host's own PID namespace: only its processes are hit. SIGKILL to the
    # container's PID 1 ends every process of the container (the kernel empties its PID
    # namespace), then the engine itself. (`pkill -f` is not used: its pattern would match the
    # shell running this command line.)
    container_pid = hosts.exec("mlops-assets-api", "docker inspect -f '{{.State.Pid}}' mlops-api").stdout.strip()
    assert int(container_pid) > 0
    hosts.exec("mlops-assets-api", f"kill -KILL {container_pid}; pkill -KILL -x dockerd")
    wait_until = time.monotonic() + 30
    while hosts.exec("mlops-assets-api", f"test -d /proc/{container_pid}", check=False).returncode == 0:
        assert time.monotonic() < wait_until, "the container's PID 1 outlived SIGKILL for 30 s"
        time.sleep(0.5)
    assert hosts.exec("mlops-assets-api", "docker info", check=False).returncode != 0
    with pytest.raises(OSError):  # refused or reset: nothing answers on the API port
        _get_json(readyz, timeout=5)

    materialized, after = _scenario(rehearsal, "6 engine and API container killed on the api host")
    assert "deployed_api" in materialized and after["deployed_api"]["ansible_seconds"] > 0
    assert not materialized & {"dataset", "candidate_models", "selected_model", "tofu_state", "deployed_hosts"}
    assert hosts.exec("mlops-assets-api", "docker info --format '{{.ServerVersion}}'").stdout.strip()
    assert str(_get_json(readyz)["model"]["version"]) == version


def test_an_api_image_that_never_becomes_ready_is_rolled_back_to_the_one_running(rehearsal):
    """The api role's rollback with the real API image: a new tag whose container exits at
    once (the running image with its entrypoint broken, as a bad build would be) is deployed
    with a short readiness timeout; the role starts the image that ran before again, /readyz
    answers with the champion, and the role fails saying what it did."""
    from mlops_assets.resources.ansible import AnsibleError
    from mlops_assets.resources.hosts import API_TAG
    from mlops_assets.settings import load_settings
    from mlops_assets.targets import ansible_for

    home, hosts, api = rehearsal["home"], rehearsal["hosts"], "mlops-assets-api"
    latest = _latest(home)
    version = latest["selected_model"][1]["champion_version"]
    readyz = latest["deployed_api"][1]["url"].removesuffix("/docs") + "/readyz"
    running = hosts.exec(api, "docker inspect -f '{{.Config.Image}}' mlops-api").stdout.strip()
    repository = running.rpartition(":")[0]
    broken = f"{repository}:broken-entrypoint"
    hosts.exec(api, "docker commit --change 'ENTRYPOINT [\"python\", \"-c\", \"raise SystemExit(3)\"]' "
                    f"mlops-api {broken}")
    started = time.monotonic()
    try:
        with pytest.raises(AnsibleError) as failure:
            ansible_for(load_settings(_env(home))).run_playbook(
                latest["tofu_state"][1]["ansible_inventory"], "site.yml", tags=[API_TAG], extra_vars={
                    # already on the host: the archive is not read
                    "api_image_repository": repository, "api_image_tag": "broken-entrypoint",
                    "api_image_source": "archive", "api_image_archive": "/nonexistent/already-loaded.tar",
                    "api_model_version": version, "api_ready_timeout": 10,
                })
    finally:
        PHASES["6b a broken image rolled back by the api role"] = round(time.monotonic() - started, 1)
    message = str(failure.value)
    assert f"The API image {broken} did not become ready" in message, message
    # the container's state is named (Docker may be restarting it: the restart policy)
    assert re.search(r"The container was (exited|restarting) \(3\)", message), message
    assert f"Rolled back to the previous image {running} (ready again)" in message, message
    assert hosts.exec(api, "docker inspect -f '{{.Config.Image}}' mlops-api").stdout.strip() == running
    assert str(_get_json(readyz)["model"]["version"]) == version
    hosts.exec(api, f"docker rmi {broken}")


def test_second_materialization_changes_nothing(rehearsal):
    assert rehearsal["first"].returncode == 0, _tail(rehearsal["first"])
    home = rehearsal["home"]
    before = _latest(home)
    started = time.monotonic()
    second = _cli(home, "run", "--all")
    PHASES["6 every asset again (--all, no change)"] = round(time.monotonic() - started, 1)
    assert second.returncode == 0, _tail(second)
    after = _latest(home)
    for name in ASSETS:
        assert after[name][0] != before[name][0], f"{name} was not materialized again"
    assert after["tofu_state"][1]["applied"] is False
    assert after["tofu_state"][1]["plan summary"] == "0 to add, 0 to change, 0 to destroy"
    assert after["container_image"][1]["rebuilt"] is False
    per_host = after["deployed_hosts"][1]["per_host"]
    assert per_host and all(c["changed"] == 0 and c["failed"] == 0 for c in per_host.values()), per_host
    # The API and the monitoring host were checked live and found as deployed: Ansible not run.
    assert after["deployed_api"][1]["changed"] == 0 and after["deployed_api"][1]["ansible_seconds"] == 0
    assert after["dashboards"][1]["changed"] == 0
    assert after["tracking_server"][1]["ansible_changed"] == 0  # the tracking server's role converged
    assert set(after["deployed_hosts"][1]["per_host"]) == {"mlops-assets-api", "mlops-assets-monitoring"}
    assert after["deployed_hosts"][1]["data_version_kept"] is True
    # Every asset pushed to the monitoring host's Pushgateway this time: every panel of the
    # pipeline dashboard returns data there.
    prometheus, auth, _ = _monitoring_prometheus(rehearsal)
    started = time.monotonic()
    deadline, empty = started + 60, ["not run"]
    while time.monotonic() < deadline and empty:
        empty = _panels_without_data(prometheus, auth, "mlops-pipeline.json", home)
        time.sleep(0 if not empty else 2)
    PHASES["wait for every pipeline panel's data on the monitoring host"] = round(time.monotonic() - started, 1)
    assert not empty, f"pipeline dashboard panels without data on the monitoring host: {empty}"


def test_a_second_api_host_joins_one_ray_cluster_and_goes_again(rehearsal):
    """api_instance_count = 2 and `make run`: tofu_state adds the instance, deployed_hosts
    brings its host up beside the others (which keep running), deployed_api makes the first
    API host the Ray head and the second a worker that joins it with the cluster's token, and
    checks both; /predict through either host is answered by replicas on both nodes, and
    Prometheus scrapes both. Then back to one host (the removal confirmed): tofu_state drains the
    second before OpenTofu destroys it, and the first serves alone."""
    from mlops_assets.rehearsal.hosts import TestHosts

    from .serving_fixtures import served_by_nodes

    home = rehearsal["home"]
    monitoring_started = rehearsal["hosts"].hosts["mlops-assets-monitoring"].init_pid
    materialized, latest = _scenario(rehearsal, "12 a second API host: one Ray cluster", env={
        "TF_VAR_api_instance_count": "2", "MLOPS_API_AUTOSCALING": "min=2,max=2"})
    assert {"tofu_state", "deployed_hosts", "deployed_api"} <= materialized, materialized
    assert latest["tofu_state"]["api_host_count"] == 2
    hosts = TestHosts.attach(home / "rehearsal" / "hosts.json")
    assert hosts.hosts["mlops-assets-monitoring"].init_pid == monitoring_started  # kept, not rebuilt
    urls = latest["deployed_api"]["api_urls"]
    assert len(urls) == 2, urls
    addresses = {url.split("//")[1].split(":")[0] for url in urls}
    assert addresses == {hosts.address("mlops-assets-api"), hosts.address("mlops-assets-api-2")}
    # One replica per node: through either host, answers from both nodes.
    from mlops_assets.ml.data import DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec, build_dataset

    x_test, _ = build_dataset(DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec()).xy("test")
    body = {"instances": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                          for row in x_test.head(3).to_dict(orient="records")]}
    started, served = time.monotonic(), {}
    while time.monotonic() - started < 120:
        served = {url: served_by_nodes(url, body) for url in urls}
        if all(nodes == addresses for nodes in served.values()):
            break
        time.sleep(2)
    PHASES["  replicas answering on both nodes after the run"] = round(time.monotonic() - started, 1)
    assert all(nodes == addresses for nodes in served.values()), served
    # deployed_api's check: both hosts answered ready with the deployed version.
    check = _api_check(home, _latest(home)["deployed_api"][0])
    assert check["passed"], check
    assert check["description"] == f"all 2 API host(s) answer ready with model version {latest['deployed_api']['model_version']}"
    assert all(f"| {url} | {latest['deployed_api']['model_version']} |" in check["hosts"] for url in urls), check["hosts"]
    assert set(check["nodes_seen"]) <= addresses and check["nodes_seen"], check
    print(f"\n[deployed_api check] {check['description']}; nodes seen: {check['nodes_seen']}\n{check['hosts']}")
    # The cluster's token: a 0400 file of the container's user on both hosts, nowhere else.
    token = (home / "secrets" / "sim" / "api_ray_token").read_text().strip()
    for name in ("mlops-assets-api", "mlops-assets-api-2"):
        assert hosts.exec(name, "stat -c '%u %a' /etc/mlops-assets/ray-token/token").stdout.split() == ["10001", "400"]
        assert token not in hosts.exec(name, "docker inspect mlops-api").stdout
    # Prometheus on the monitoring host scrapes both API hosts.
    prometheus, auth, _ = _monitoring_prometheus(rehearsal)
    deadline, up = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        up = [r["metric"]["instance"] for r in _query(prometheus, 'up{job="mlops-api"} == 1', auth)]
        if len(up) == 2:
            break
        time.sleep(2)
    assert sorted(up) == sorted(f"{address}:8080" for address in addresses), up

    # The security groups, enforced on the hosts (rehearsal/security_groups.py): of all that
    # listens on an API host (Ray's ports, and what Ray and Serve bind on every interface:
    # Serve's fallback proxy, Ray's metrics exporter), only the API port answers this machine
    # (and SSH, admin_cidr's), only the metrics and node_exporter answer the monitoring host,
    # and the other API host reaches exactly the listening ports among infra_tf's ray_ports.
    from mlops_assets.serving.container import RAY_PORTS

    from .infra_helpers import listening_ports, ray_port_ranges, reachable_ports

    ranges = ray_port_ranges(RAY_PORTS)
    head, worker = hosts.address("mlops-assets-api"), hosts.address("mlops-assets-api-2")
    monitoring = "mlops-assets-monitoring"
    started, reached = time.monotonic(), {}
    for name, address, other in (("mlops-assets-api", head, "mlops-assets-api-2"), ("mlops-assets-api-2", worker, "mlops-assets-api")):
        listening = listening_ports(hosts, name, address)
        ray = sorted(port for port in listening if any(low <= port <= high for low, high in ranges))
        assert {6380, 6381} <= set(ray) and (6379 in ray) == (name == "mlops-assets-api"), listening  # raylet; GCS on the head
        reached[name] = {"listening": sorted(listening), "control": reachable_ports(None, address, listening),
                         "monitoring": reachable_ports((hosts, monitoring), address, listening),
                         "other API host": reachable_ports((hosts, other), address, listening)}
        assert reached[name]["control"] == [22, 8000], reached[name]
        assert reached[name]["monitoring"] == [8080, 9100], reached[name]
        assert reached[name]["other API host"] == ray, (ray, reached[name])
    PHASES["  every listening port of both API hosts probed from outside and inside the API group"] = round(time.monotonic() - started, 1)
    print(f"\n[security groups] {json.dumps(reached)}")
    # The cluster's state store: Redis on the monitoring host (ray_gcs_store), named to the head
    # only; its port answers the API hosts, not this machine.
    store = f"{hosts.address(monitoring)}:6379"
    for name in ("mlops-assets-api", "mlops-assets-api-2"):
        env = json.loads(hosts.exec(name, "docker inspect mlops-api").stdout)[0]["Config"]["Env"]
        assert (f"RAY_REDIS_ADDRESS={store}" in env) == (name == "mlops-assets-api"), env
    assert reachable_ports(None, hosts.address(monitoring), {6379}) == []
    assert reachable_ports((hosts, "mlops-assets-api-2"), hosts.address(monitoring), {6379}) == [6379]

    # Back to one API host: the second instance, its host and Ray's rules go (confirmed).
    confirm = _run_config(home, "one-api-host", "ops:\n  tofu_state:\n    config:\n      confirm_replacements:\n"
                          "        - aws_instance.api\n        - aws_vpc_security_group_ingress_rule.api_ray\n"
                          "        - aws_vpc_security_group_egress_rule.api_ray\n"
                          "        - aws_vpc_security_group_ingress_rule.monitoring_ray_gcs_store\n"
                          "        - aws_vpc_security_group_egress_rule.api_ray_gcs_store\n")
    materialized, latest = _scenario(rehearsal, "13 back to one API host", "--config", str(confirm))
    assert latest["tofu_state"]["api_host_count"] == 1 and "api_urls" not in latest["deployed_api"]
    # The second host was drained (api_drain.yml) before OpenTofu destroyed its instance.
    assert len(latest["tofu_state"]["drained_api_instances"]) == 1, latest["tofu_state"]
    assert latest["tofu_state"]["api_drain"].startswith("drained ['mlops-assets-api-2']"), latest["tofu_state"]
    hosts = TestHosts.attach(home / "rehearsal" / "hosts.json")
    assert set(hosts.hosts) == {"mlops-assets-api", "mlops-assets-monitoring"}
    # No cluster, no state store: its container is gone from the monitoring host.
    assert hosts.exec("mlops-assets-monitoring", "docker ps -aq --filter name=ray-gcs-store").stdout.strip() == ""
    api = hosts.address("mlops-assets-api")
    assert _get_json(f"http://{api}:8000/predict", body)["model"]["version"] == latest["deployed_api"]["model_version"]
    rehearsal["hosts"] = hosts


def test_teardown_leaves_nothing_behind(rehearsal, capsys):
    home, hosts = rehearsal["home"], rehearsal["hosts"]
    emulator = json.loads((home / "rehearsal" / "emulator" / "emulator.json").read_text())
    started = time.monotonic()
    down = _cli(home, "down", timeout=600)
    rehearsal["down"] = down
    PHASES["7 teardown (make down: destroy, hosts, emulator)"] = round(time.monotonic() - started, 1)
    assert down.returncode == 0, _tail(down)
    assert "resources_destroyed" in down.stdout
    assert hosts is not None and hosts.footprint() == [], hosts and hosts.footprint()
    assert not (home / "rehearsal" / "hosts.json").exists()
    assert not Path(f"/proc/{emulator['pid']}").exists() or b"moto" not in Path(f"/proc/{emulator['pid']}/cmdline").read_bytes()
    containers = _engine(lambda c: [x.name for x in c.containers.list(all=True)])
    assert not [name for name in containers if "mlops" in name], containers  # builds leave no container
    with capsys.disabled():
        print("\nrehearsal e2e phase times (s):")
        for phase, seconds in PHASES.items():
            print(f"  {phase}: {seconds}")
