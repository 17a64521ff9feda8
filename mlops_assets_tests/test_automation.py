"""Schedules, sensors and automation conditions, through Dagster's own evaluation contexts."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import dagster as dg
import polars as pl
import pytest

from mlops_assets.automation import build_automation
from mlops_assets.freshness import rebuild_condition
from mlops_assets.resources.prometheus_api import PrometheusApi

from .conftest import make_settings

pytestmark = pytest.mark.unit


def _sensor(settings, name):
    _, sensors = build_automation(settings)
    return next(s for s in sensors if s.name == name)


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield instance


# -- the retraining schedule ---------------------------------------------------------------

def test_schedule_requests_only_stale_assets(tmp_path, instance):
    settings = make_settings(tmp_path, MLOPS_RETRAIN_CRON="*/30 * * * *")
    schedules, _ = build_automation(settings)
    schedule = schedules[0]
    assert schedule.cron_schedule == "*/30 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    request = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests[0]
    assert request.stale_assets_only
    assert request.tags["mlops/trigger"] == "schedule"


# -- the new-data sensor -------------------------------------------------------------------

def test_new_data_sensor_fires_once_per_content(tmp_path, instance):
    data = tmp_path / "data.csv"
    pl.DataFrame({"x": [1.0, 2.0], "label": ["a", "b"]}).write_csv(data)
    settings = make_settings(tmp_path, MLOPS_DATASET=str(data), MLOPS_TARGET_COLUMN="label")
    sensor = _sensor(settings, "new_data_sensor")

    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None))
    assert len(first.run_requests) == 1
    key = first.run_requests[0].run_key
    assert key.startswith("data-") and first.cursor == key.removeprefix("data-")
    assert first.asset_events[0].asset_key == dg.AssetKey("dataset_source")

    # the same bytes again: nothing, whatever the file's timestamp says
    data.write_bytes(data.read_bytes())
    same = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert not same.run_requests and "no new data" in same.skip_message

    # new bytes: a new request with a new run key
    pl.DataFrame({"x": [1.0, 2.0, 3.0], "label": ["a", "b", "a"]}).write_csv(data)
    changed = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert len(changed.run_requests) == 1 and changed.run_requests[0].run_key != key
    assert changed.cursor != first.cursor


def test_new_data_sensor_does_not_refire_for_data_already_observed(tmp_path, instance):
    data = tmp_path / "data.csv"
    pl.DataFrame({"x": [1.0], "label": ["a"]}).write_csv(data)
    settings = make_settings(tmp_path, MLOPS_DATASET=str(data), MLOPS_TARGET_COLUMN="label")
    sensor = _sensor(settings, "new_data_sensor")
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None))
    for event in first.asset_events:  # what the daemon records for the tick
        instance.report_runless_asset_event(event)
    # a sensor reset (cursor lost) on the same data requests nothing
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=None))
    assert not again.run_requests
    assert again.cursor == first.cursor


def test_new_data_sensor_skips_with_the_reason_when_the_file_is_gone(tmp_path, instance):
    settings = make_settings(tmp_path, MLOPS_DATASET=str(tmp_path / "gone.csv"))
    result = _sensor(settings, "new_data_sensor").evaluate_tick(dg.build_sensor_context(instance=instance))
    assert not result.run_requests and "does not exist" in result.skip_message


# -- the drift sensor ----------------------------------------------------------------------

class FakePrometheus:
    """A loopback stand-in for Prometheus's /api/v1/query answering canned values of the
    recording rules the sensor reads, to drive it through its cursor scenarios. The sensor's
    queries themselves run against a real Prometheus scraping the real API in
    test_monitoring_live.py."""

    def __init__(self):
        from mlops_assets.automation import DRIFT_TVD, FEATURE_SHIFTS, SERVED_PREDICTIONS
        from mlops_assets.monitoring.rules import drift_condition

        self.predictions: float | None = None
        self.tvd: float | None = None
        self.drifting = False  # what Prometheus answers for the alert's condition
        self.means: dict[str, float] = {}
        outer = self

        def answer(query: str) -> list[dict]:
            scalar = lambda value: [] if value is None else [{"metric": {}, "value": [0, str(value)]}]  # noqa: E731
            if query == SERVED_PREDICTIONS:
                return scalar(outer.predictions)
            if query == DRIFT_TVD:
                return scalar(outer.tvd)
            if query == drift_condition():
                return scalar(outer.tvd if outer.drifting else None)
            if query == FEATURE_SHIFTS:
                return [{"metric": {"feature": k}, "value": [0, str(v)]} for k, v in outer.means.items()]
            raise AssertionError(f"the sensor sent a query this test does not know: {query}")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                result = answer(parse_qs(urlparse(self.path).query)["query"][0])
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def prometheus():
    fake = FakePrometheus()
    yield fake
    fake.close()


def test_drift_sensor_scenarios(tmp_path, instance, prometheus, monkeypatch):
    settings = make_settings(tmp_path, MLOPS_DRIFT_COOLDOWN_MINUTES="10")
    sensor = _sensor(settings, "drift_sensor")
    resources = {"prometheus_api": PrometheusApi(url=prometheus.url)}
    clock = {"now": 1_000_000.0}
    monkeypatch.setattr("mlops_assets.automation.time.time", lambda: clock["now"])

    def tick(cursor=None):
        return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))

    assert "only 0 predictions in the last hour (need 100)" in tick().skip_message  # nothing served yet
    prometheus.predictions = 15
    assert "only 15 predictions" in tick().skip_message

    prometheus.predictions = 1000
    assert "materialize `dashboards`" in tick().skip_message  # no training reference loaded

    prometheus.tvd = 0.05  # like training
    prometheus.means = {"bill_length_mm": 0.1}  # z-score from the recording rule
    calm = tick()
    assert not calm.run_requests and "no drift: prediction TVD 0.050 (threshold 0.25)" in calm.skip_message
    assert "bill_length_mm" in calm.skip_message

    prometheus.tvd, prometheus.drifting = 0.45, True  # mostly one class: the alert's condition holds
    fired = tick()
    assert len(fired.run_requests) == 1 and fired.run_requests[0].tags["mlops/trigger"] == "drift"
    assert fired.run_requests[0].tags["mlops/drift_tvd"] == "0.4500"

    clock["now"] += 5 * 60  # within the cooldown: no storm
    cooling = tick(fired.cursor)
    assert not cooling.run_requests and "cooling down" in cooling.skip_message

    clock["now"] += 6 * 60  # cooldown over, drift persists: fire again, with a new run key
    again = tick(fired.cursor)
    assert len(again.run_requests) == 1 and again.run_requests[0].run_key != fired.run_requests[0].run_key


def test_drift_sensor_skips_when_prometheus_is_down(tmp_path, instance):
    sensor = _sensor(make_settings(tmp_path), "drift_sensor")
    context = dg.build_sensor_context(instance=instance, resources={"prometheus_api": PrometheusApi(url="http://127.0.0.1:9")})
    result = sensor.evaluate_tick(context)
    assert not result.run_requests and "did not answer" in result.skip_message


# -- automation conditions -----------------------------------------------------------------

def _toy_defs(condition):
    version = {"value": "A"}

    @dg.asset
    def upstream():
        return dg.Output(version["value"], data_version=dg.DataVersion(version["value"]))

    @dg.asset(deps=[upstream], automation_condition=condition)
    def downstream():
        return None

    return dg.Definitions(assets=[upstream, downstream]), version


@pytest.mark.parametrize("label, condition, refires_on_same_version", [
    ("rebuild_condition", rebuild_condition(), False),
    ("eager", dg.AutomationCondition.eager(), True),
])
def test_downstream_follows_data_versions_not_materializations(instance, label, condition, refires_on_same_version):
    defs, version = _toy_defs(condition)
    downstream = dg.AssetKey("downstream")

    def evaluate(cursor):
        return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)

    def materialize(*keys):
        dg.materialize([defs.resolve_assets_def(k) for k in keys], instance=instance, selection=list(keys))

    result = evaluate(None)  # the first tick only records the starting state
    assert result.total_requested == 0
    materialize("upstream")
    result = evaluate(result.cursor)
    assert result.get_requested_partitions(downstream) == {None}  # upstream updated, downstream missing
    materialize("downstream")
    result = evaluate(result.cursor)
    assert result.total_requested == 0

    materialize("upstream")  # same data version A
    result = evaluate(result.cursor)
    assert (result.total_requested == 1) is refires_on_same_version, label
    if result.total_requested:
        materialize("downstream")
        result = evaluate(result.cursor)

    version["value"] = "B"
    materialize("upstream")  # a new data version: both conditions request downstream
    result = evaluate(result.cursor)
    assert result.get_requested_partitions(downstream) == {None}


# -- `make run` observes the data source only when it changed -------------------------------

def test_cli_observes_the_source_again_only_when_its_bytes_changed(tmp_path, instance):
    from mlops_assets.cli import _source_observed
    from mlops_assets.definitions import build_definitions

    data = tmp_path / "penguins.csv"
    pl.DataFrame({"x": [1.0, 2.0, 3.0], "species": ["a", "b", "a"]}).write_csv(data)
    settings = make_settings(tmp_path, MLOPS_DATASET=str(data))
    observe = build_definitions(settings).resolve_job_def("observe_sources")
    assert not _source_observed(settings, instance)  # never observed: observe
    assert observe.execute_in_process(instance=instance).success
    assert _source_observed(settings, instance)  # same bytes: nothing new to record
    pl.DataFrame({"x": [1.0, 2.0, 4.0], "species": ["a", "b", "a"]}).write_csv(data)
    assert not _source_observed(settings, instance)  # new bytes: observe (dataset becomes stale)
    assert observe.execute_in_process(instance=instance).success
    assert _source_observed(settings, instance)
    data.unlink()
    assert not _source_observed(settings, instance)  # unreadable: the observe run reports why
    failed = observe.execute_in_process(instance=instance, raise_on_error=False)
    assert not failed.success


def test_a_changed_opentofu_variable_makes_tofu_state_stale(tmp_path, monkeypatch):
    """TF_VAR_* and the aws var file are part of tofu_state's code version: a new value
    (api_instance_count 2 -> 3) makes it stale, so `make run` applies it; none set, the module's
    own version, as before."""
    from mlops_assets.definitions import build_definitions

    def version(target: str) -> str:
        defs = build_definitions(make_settings(tmp_path / "home", MLOPS_TARGET=target))
        return defs.resolve_asset_graph().get(dg.AssetKey("tofu_state")).code_version

    for name in [n for n in os.environ if n.startswith("TF_VAR_")]:
        monkeypatch.delenv(name)
    plain = version("sim")
    assert "+variables-" not in plain
    monkeypatch.setenv("TF_VAR_api_instance_count", "2")
    two = version("sim")
    monkeypatch.setenv("TF_VAR_api_instance_count", "3")
    three = version("sim")
    assert len({plain, two, three}) == 3 and two.startswith(plain)
    monkeypatch.delenv("TF_VAR_api_instance_count")
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "home" / "aws.tfvars").write_text('api_instance_count = 2\n')
    aws = version("aws")
    (tmp_path / "home" / "aws.tfvars").write_text('api_instance_count = 3\n')
    assert version("aws") != aws and "+variables-" in aws
