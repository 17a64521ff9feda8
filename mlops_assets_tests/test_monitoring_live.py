"""Live verification of the monitoring, instead of a Grafana server (none can run here): the
`dashboards` asset renders and checks the files and starts a real Prometheus (Debian's, as
the current user, on a free loopback port) scraping the session's real Ray Serve API; under a
short bounded load to 127.0.0.1, every PromQL expression of every dashboard panel and every
rule runs against it:

- panel queries of the API and model dashboards parse and return data;
- rule expressions evaluate without error and each of their selectors matches live series
  (except the 5xx selectors: a healthy API answers none; the same metric must exist);
- no expression names a metric the API did not export during the test (recording-rule
  outputs `level:metric:op` and Prometheus' own `up` aside); the hosts dashboard reads only
  what the local node_exporter exported, and returns data too;
- the pipeline's metrics: a real `dataset` materialization through the push hooks and the
  other assets' pushes (from real values) land in the local Pushgateway, Prometheus scrapes it
  with honor_labels, and every panel of the pipeline dashboard returns data.
"""

import json
import random
import re
import threading
import time

import dagster as dg
import pytest
import requests
import yaml

from mlops_assets.monitoring import API_JOB, pipeline_metrics, promql, render
from mlops_assets.monitoring.panels import panel_queries
from mlops_assets_tests.serving_fixtures import as_instances, free_ports

pytestmark = pytest.mark.service
# The dashboards and rules do not depend on the engine: the one a trained champion gets.
SERVING_ENGINES = ("onnx",)

RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval becomes (scrapes here are every second)
LOAD_SECONDS = 20
# Matchers that select nothing in a healthy API; the selector is checked without them. (A
# `max` quality floor exists only when the selection metric is log_loss; here it is f1_macro.)
EMPTY_WHEN_HEALTHY = ['status_code=~"5.."', 'direction="max"']


class BoundedLoad:
    """A few threads sending good, rejected and probe requests to 127.0.0.1 for `seconds`."""

    def __init__(self, api_url: str, rows: list[dict], seconds: float, workers: int = 3) -> None:
        self.api_url, self.rows, self.seconds = api_url, rows, seconds
        self.statuses: dict[int | str, int] = {}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(workers)]

    def _send(self, session: requests.Session, rnd: random.Random, n: int) -> int:
        if n % 20 == 7:
            return session.post(f"{self.api_url}/predict", json={"instances": [{"no_such_feature": 1}]}, timeout=30).status_code
        if n % 97 == 13:
            body = b'{"instances": [' + b" " * (1024 * 1024 + 10) + b"]}"
            headers = {"Content-Type": "application/json"}
            return session.post(f"{self.api_url}/predict", data=body, headers=headers, timeout=30).status_code
        if n % 25 == 3:
            return session.get(f"{self.api_url}/readyz", timeout=30).status_code
        batch = rnd.sample(self.rows, k=rnd.randint(1, 5))
        return session.post(f"{self.api_url}/predict", json={"instances": batch}, timeout=30).status_code

    def _run(self, seed: int) -> None:
        rnd, session, n = random.Random(seed), requests.Session(), seed
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            n += 1
            try:
                status = self._send(session, rnd, n)
            except requests.RequestException as exc:  # counted: the test asserts on them
                status, session = type(exc).__name__, requests.Session()
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
            time.sleep(0.01)  # a modest load: the 2 cores are shared with the API

    def start(self) -> "BoundedLoad":
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> dict[int, int]:
        for thread in self._threads:
            thread.join(timeout=self.seconds + 60)
        return self.statuses


@pytest.fixture(scope="module")
def live(serving_api, test_split, trained_home, tmp_path_factory):
    """The `dashboards` asset run against the session API, its Prometheus, and load."""
    from mlops_assets.assets.monitoring import DashboardsConfig, dashboards
    from mlops_assets.resources.api_deployer import DeployedApi
    from mlops_assets.resources.monitoring import LocalMonitoring
    from mlops_assets.ml.data import DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec, build_dataset
    from mlops_assets.resources.prometheus import LocalPrometheus

    port, node_port, gateway_port, alertmanager_port = free_ports(4)
    prometheus = LocalPrometheus(state_dir=str(tmp_path_factory.mktemp("prometheus")), port=port, node_exporter_port=node_port,
                                 pushgateway_port=gateway_port, alertmanager_port=alertmanager_port)
    out = tmp_path_factory.mktemp("monitoring")
    api = DeployedApi(
        url=serving_api.url,
        metrics_url=serving_api.metrics_url,
        model_name=serving_api.model_name,
        model_version=serving_api.versions[-1],
        action="deployed",
    )
    dataset = build_dataset(DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec())
    config = DashboardsConfig(out_dir=str(out), scrape_interval="1s", evaluation_interval="1s")
    x_test, _ = test_split
    load = BoundedLoad(serving_api.url, as_instances(x_test), LOAD_SECONDS).start()
    try:
        started = time.monotonic()
        monitoring = LocalMonitoring(out_dir=str(out), promtool_record=str(out.parent / "promtool-passed.json"),
                                     prometheus=prometheus)
        output = dashboards(dg.build_asset_context(), config=config, monitoring=monitoring, deployed_api=api,
                            dataset=dataset)
        asset_seconds = time.monotonic() - started
        push_pipeline_metrics(prometheus, trained_home, api, tmp_path_factory.mktemp("dagster"))
        statuses = load.join()
        # Ray's exporter lags the app by a few seconds: wait until the app's own series and
        # the recording rules built on them are in Prometheus.
        prometheus.wait_until(
            lambda: prometheus.query(f'sum(ray_mlops_api_predictions_total{{job="{API_JOB}"}})')
            and prometheus.query("mlops_api:prediction_class_drift:tvd1h")
            and prometheus.query("mlops_api:feature_mean_shift:zscore1h")
            and prometheus.query('ray_serve_num_http_requests_total{status_code="422"}')
            and len(prometheus.query(f'count by (asset) ({{job="{pipeline_metrics.JOB}"}})')) == len(PIPELINE_ASSETS),
            timeout_s=90,
            what="the API's series and the recording rules",
        )
        time.sleep(3)  # a few more scrapes and rule evaluations after the last request
        yield {"output": output, "prometheus": prometheus, "out": out, "statuses": statuses, "asset_seconds": asset_seconds}
    finally:
        load.join()
        prometheus.stop()


PIPELINE_ASSETS = ("dataset", "candidate_models", "selected_model", "container_image", "tofu_state", "deployed_hosts",
                   "deployed_api", "dashboards")


def push_pipeline_metrics(prometheus, trained_home, api, dagster_dir) -> None:
    """What `make run` pushes: `dataset` materialized for real through the hooks (so the push
    path is the product's), the other assets pushed from real values (the session's champion,
    the API) as their hooks would; a rolled-back deployment first, then a good one."""
    from mlops_assets import pipeline_metrics as hooks
    from mlops_assets.assets.data import dataset
    from mlops_assets.image.build import ContainerImage
    from mlops_assets.ml_phase import CandidateSet
    from mlops_assets.resources.data_source import DataSource
    from mlops_assets.resources.mlflow_registry import LoggedCandidate
    from mlops_assets.resources.pipeline_metrics import LocalPipelineMetrics

    resource = LocalPipelineMetrics(target="local", prometheus=prometheus)
    with dg.instance_for_test(temp_dir=str(dagster_dir)) as instance:
        assert dg.materialize(hooks.with_pipeline_metrics([dataset]), instance=instance, resources={
            "pipeline_metrics": resource, "data_source": DataSource(location="palmerpenguins", target_column="species")}).success
    selected = trained_home["selected"]
    candidates = CandidateSet("parent", "fp", [LoggedCandidate(selected.family, "r1", "u1", {}, {"f1_macro": 0.97, "accuracy": 0.98}),
                                               LoggedCandidate("logistic_regression", "r2", "u2", {}, {"f1_macro": 0.95})], False)
    image = ContainerImage(ref="mlops-api:live", tag="live", model_name=selected.name, model_version=selected.version,
                           size_bytes=150_000_000)
    values = {"candidate_models": candidates, "selected_model": selected, "container_image": image,
              "tofu_state": {}, "deployed_hosts": None, "dashboards": None}
    rollback = dg.Failure(description="rolled back", metadata={"rolled_back": True})
    runs = [hooks.materialization(asset, "local", succeeded=True, at=time.time(), duration_s=1.5, outputs={"result": value},
                                  retraining_period_s=86400.0) for asset, value in values.items()]
    runs.append(hooks.materialization("deployed_api", "local", succeeded=False, at=time.time(), duration_s=3.0, outputs={},
                                      exception=rollback))
    runs.append(hooks.materialization("deployed_api", "local", succeeded=True, at=time.time(), duration_s=4.0,
                                      outputs={"result": api}))
    for run in runs:
        assert pipeline_metrics.push(prometheus.pushgateway_url, run, pytest.fail).pushed


def _panel_queries(out) -> dict[str, list[tuple[str, str]]]:
    """dashboard file -> [(panel title, expr)], $__rate_interval substituted."""
    return {path.name: panel_queries(json.loads(path.read_text()), RATE_INTERVAL)
            for path in sorted((out / "dashboards").glob("*.json"))}


def _rules(out) -> list[dict]:
    return [
        rule
        for path in sorted((out / render.RULES_DIR).glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _exported_names(prometheus) -> set[str]:
    """Every metric name Prometheus scraped from the API and the pipeline's pushes during the test."""
    return {s["__name__"] for job in (API_JOB, pipeline_metrics.JOB)
            for s in prometheus.series(f'{{job="{job}"}}', lookback_s=900)}


def _recorded_names(out) -> set[str]:
    return {rule["record"] for rule in _rules(out) if "record" in rule}


def test_the_asset_provisions_prometheus(live):
    output, prometheus = live["output"], live["prometheus"]
    meta = output.metadata
    assert meta["rule_count"].value == len(_rules(live["out"])) > 10
    assert meta["prometheus_url"].value == prometheus.url
    # API + node_exporter + Pushgateway
    assert len(meta["targets_up"].data) == 3 and all(meta["targets_up"].data.values()), meta["targets_up"].data
    assert output.data_version.value == render.content_hash({p: (live["out"] / p).read_text() for p in output.value.files})
    loaded = {rule["name"] for group in prometheus.rule_groups() for rule in group["rules"]}
    assert {r.get("alert") or r["record"] for r in _rules(live["out"])} == loaded
    # The Alertmanager beside it runs and Prometheus sends to it; no receiver is configured here.
    assert prometheus.alertmanager_pid() is not None and meta["alertmanager_url"].value == prometheus.alertmanager_url
    active = prometheus.http.api("alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"{prometheus.alertmanager_url}/api/v2/alerts"]
    assert meta["alert_delivery"].value.startswith("no receiver configured")
    # The load produced what the panels need: answers, rejected inputs, an oversized body.
    statuses = live["statuses"]
    assert statuses.get(200, 0) > 50 and statuses.get(422) and statuses.get(413), statuses
    assert not [s for s in statuses if isinstance(s, int) and s >= 500], f"server errors: {statuses}"
    # The API's own tests judge failed connections; here they only must not hide the traffic.
    dropped = sum(n for s, n in statuses.items() if not isinstance(s, int))
    assert dropped <= 0.02 * sum(statuses.values()), f"too many failed connections: {statuses}"


@pytest.mark.parametrize("dashboard", ["mlops-api.json", "mlops-model.json", "mlops-pipeline.json"])
def test_every_panel_query_returns_data(live, dashboard):
    prometheus = live["prometheus"]
    exported = _exported_names(prometheus)
    allowed = exported | _recorded_names(live["out"]) | {"up"}
    empty, foreign = [], []
    for title, expr in _panel_queries(live["out"])[dashboard]:
        names = promql.metric_names(expr)
        foreign += [f"{title}: {name}" for name in names - allowed]
        if not prometheus.query(expr):  # raises on a parse or evaluation error
            empty.append(f"{title}: {expr}")
    assert not foreign, f"panels name metrics the API does not export: {foreign}"
    assert not empty, f"panel queries with no data: {empty}"


def test_the_pipeline_metrics_keep_their_pushed_labels(live):
    # honor_labels: the pushed job and grouping labels, not the scrape job's.
    prometheus = live["prometheus"]
    rows = prometheus.query(f"{pipeline_metrics.DATASET_ROWS}")
    assert [r["metric"]["job"] for r in rows] == [pipeline_metrics.JOB] and rows[0]["metric"]["asset"] == "dataset"
    assert rows[0]["metric"]["target"] == "local" and float(rows[0]["value"][1]) > 300
    (rollbacks,) = prometheus.query(pipeline_metrics.ROLLBACKS_TOTAL)
    assert float(rollbacks["value"][1]) == 1
    # The rollback alert evaluates true on these series (its `for` is 0m).
    firing = {a["labels"]["alertname"] for a in prometheus.http.api("alerts")["alerts"] if a["state"] == "firing"}
    assert "MlopsPipelineRollback" in firing and "MlopsPipelineAssetFailing" not in firing


def test_hosts_dashboard_queries_return_node_exporter_data(live):
    # The local target runs a node_exporter on loopback beside Prometheus (job `node`).
    prometheus = live["prometheus"]
    exported = {s["__name__"] for s in prometheus.series('{job="node"}', lookback_s=900)}
    empty = []
    for title, expr in _panel_queries(live["out"])["mlops-hosts.json"]:
        for selector in promql.selectors(expr):
            assert selector.name in exported | {"up"}, (title, selector)
            assert 'job="node"' in selector.matchers, (title, selector)
        if not prometheus.query(expr):
            empty.append(f"{title}: {expr}")
    assert not empty, f"hosts panel queries with no data: {empty}"


def test_every_rule_evaluates_and_its_selectors_match_live_series(live):
    prometheus = live["prometheus"]
    exported = _exported_names(prometheus)
    allowed = exported | _recorded_names(live["out"]) | {"up"}
    unmatched, foreign = [], []
    for rule in _rules(live["out"]):
        name = rule.get("alert") or rule["record"]
        prometheus.query(rule["expr"])  # raises on a parse or evaluation error
        for selector in promql.selectors(rule["expr"]):
            foreign += [f"{name}: {selector.name}"] if selector.name not in allowed else []
            matchers = selector.matchers
            for empty in EMPTY_WHEN_HEALTHY:
                matchers = re.sub(r",?\s*" + re.escape(empty), "", matchers).strip(", ")
            text = f"{selector.name}{{{matchers}}}" if matchers else selector.name
            if not prometheus.series(text, lookback_s=900):
                unmatched.append(f"{name}: {text}")
    assert not foreign, f"rules name metrics the API does not export: {foreign}"
    assert not unmatched, f"rule selectors matching no live series: {unmatched}"


def test_recorded_training_reference_and_served_distribution(live):
    prometheus = live["prometheus"]
    training = {r["metric"]["predicted_class"]: float(r["value"][1]) for r in prometheus.query("mlops_model:training_class_ratio")}
    assert set(training) == {"Adelie", "Chinstrap", "Gentoo"} and sum(training.values()) == pytest.approx(1, abs=1e-4)
    served = {r["metric"]["predicted_class"]: float(r["value"][1]) for r in prometheus.query("mlops_api:prediction_class_ratio:rate1h")}
    assert served and sum(served.values()) == pytest.approx(1, abs=1e-6)
    (tvd,) = prometheus.query("mlops_api:prediction_class_drift:tvd1h")
    # Test rows are a stratified sample: the served classes are close to the training shares.
    assert 0 <= float(tvd["value"][1]) < 0.25
    shifts = {r["metric"]["feature"]: float(r["value"][1]) for r in prometheus.query("mlops_api:feature_mean_shift:zscore1h")}
    assert shifts and all(abs(z) < 2 for z in shifts.values()), shifts


def test_the_drift_sensor_reads_the_recording_rules_of_this_prometheus(live, tmp_path):
    """The drift sensor's own queries (automation.py) against this real Prometheus scraping
    the real API: it reads the drift the recording rule computed, over the predictions the load
    made, decides with the alert's expression (no drift: the test rows are a stratified
    sample) and reports the largest feature shift."""
    from mlops_assets.automation import DRIFT_TVD, SERVED_PREDICTIONS, evaluate_drift
    from mlops_assets.monitoring.rules import DRIFT_MIN_PREDICTIONS, drift_condition
    from mlops_assets.resources.prometheus_api import PrometheusApi

    from .conftest import make_settings

    prometheus = live["prometheus"]
    (served,) = prometheus.query(SERVED_PREDICTIONS)
    assert float(served["value"][1]) >= DRIFT_MIN_PREDICTIONS, served  # the sensor gets past its minimum
    assert prometheus.query(drift_condition()) == []  # parses and evaluates; no drift here
    (tvd,) = prometheus.query(DRIFT_TVD)

    result = evaluate_drift(dg.build_sensor_context(), PrometheusApi(url=prometheus.url), make_settings(tmp_path),
                            now=time.time())

    assert isinstance(result, dg.SkipReason), result
    found = re.search(r"^no drift: prediction TVD ([0-9.]+) \(threshold 0\.25\), largest feature mean shift "
                      r"-?[0-9.]+ sd \((\w+)\)$", result.skip_message)
    assert found, result.skip_message
    assert float(found.group(1)) == pytest.approx(float(tvd["value"][1]), abs=0.01)  # the rule's value, not recomputed


def test_the_model_version_in_service_is_the_champion(live, serving_api):
    (info,) = live["prometheus"].query(
        f'max by (model_version) (last_over_time(ray_mlops_api_model_info{{job="{API_JOB}"}}[1m])) == 1'
    )
    assert info["metric"]["model_version"] == serving_api.versions[-1]


def test_reload_keeps_the_same_server(live):
    prometheus = live["prometheus"]
    pid = prometheus.pid()
    assert prometheus.ensure_running(live["out"] / render.CONFIG_FILE) is False
    assert prometheus.pid() == pid and prometheus._ready()


def test_stop_ends_prometheus_node_exporter_pushgateway_and_alertmanager(live):
    prometheus = live["prometheus"]
    pids = [prometheus.pid(), prometheus.node_exporter_pid(), prometheus.pushgateway_pid(), prometheus.alertmanager_pid()]
    assert all(pids)
    assert prometheus.stop() is True
    assert prometheus.pid() is None and prometheus.node_exporter_pid() is None and prometheus.pushgateway_pid() is None
    assert prometheus.alertmanager_pid() is None
    assert not [p for p in pids if __import__("os").path.exists(f"/proc/{p}/cmdline") and open(f"/proc/{p}/cmdline").read()]
