"""The pipeline's own metrics (monitoring/pipeline_metrics.py, pipeline_metrics.py): every
materializable asset carries the push hooks in every target; each materialization becomes one
registry of the documented names; the timestamps and the rollback counter survive pushes; a
gateway that is down is a warning, never a failed asset; and, against Debian's real
Pushgateway, a real materialization lands there, a restart keeps it and `stop` ends it.
The dashboard and the rules over these series are checked live in test_monitoring_live.py."""

import logging
import socket
import time

import dagster as dg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlops_assets import pipeline_metrics as hooks
from mlops_assets.monitoring import pipeline_metrics as pm
from mlops_assets.resources.pipeline_metrics import LocalPipelineMetrics, PipelineMetrics
from mlops_assets_tests.conftest import make_settings
from mlops_assets_tests.serving_fixtures import free_ports


def _samples(registry) -> dict[tuple, float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the with-block ends: nothing listens


@pytest.mark.unit
@pytest.mark.parametrize("target", ["local", "sim", "aws"])
def test_every_materializable_asset_pushes_in_every_target(tmp_path, target):
    from mlops_assets.definitions import build_definitions

    env = {"MLOPS_RETRAIN_CRON": "0 */6 * * *"}
    if target == "aws":
        env["MLOPS_PUSHGATEWAY_URL"] = "http://10.0.0.9:9091/"
    defs = build_definitions(make_settings(tmp_path, MLOPS_TARGET=target, **env))
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def("materialize_all")
    for key in graph.materializable_asset_keys:
        names = {hook.name for hook in job.get_all_hooks_for_handle(job.asset_layer.get_op_output_handle(key).node_handle)}
        assert names == {"push_pipeline_metrics_on_success", "push_pipeline_metrics_on_failure"}, key
    resource = defs.resources["pipeline_metrics"]
    assert resource.target == target and resource.retraining_period_s == 6 * 3600
    if target == "local":
        assert isinstance(resource, LocalPipelineMetrics) and resource.prometheus is defs.resources["monitoring"].prometheus
    else:
        assert type(resource) is PipelineMetrics
        assert resource.gateway_url == ("http://10.0.0.9:9091" if target == "aws" else None)
        # Else the monitoring host's gateway, where deployed_hosts records it, with its basic auth.
        assert resource.gateway_record == defs.resources["host_configurator"].pushgateway_record
        assert resource.gateway_record.endswith(f"ansible/{target}/pushgateway.json")
        assert resource.username == "admin" and resource.password_env == "MLOPS_PUSHGATEWAY_PASSWORD"
        assert (resource.password_file or "").endswith("rehearsal/secrets/pushgateway_web_password" if target == "sim" else "")


@pytest.mark.unit
def test_sim_and_aws_push_to_the_recorded_monitoring_host_gateway_with_basic_auth(tmp_path, monkeypatch):
    from mlops_assets.state import StateFile

    record = tmp_path / "pushgateway.json"
    resource = PipelineMetrics(target="sim", gateway_record=str(record), username="admin",
                               password_env="MLOPS_TEST_PUSHGATEWAY_PASSWORD", password_file=str(tmp_path / "secret"))
    log = type("Log", (), {"messages": [], "info": lambda self, m: self.messages.append(m)})()
    assert resource.gateway(log) is None and "deployed_hosts puts one on the monitoring host" in log.messages[0]
    StateFile(record).write({"url": "http://172.31.0.3:9091"})
    assert resource.gateway(log) == "http://172.31.0.3:9091"
    assert resource.model_copy(update={"gateway_url": "http://10.0.0.9:9091"}).gateway(log) == "http://10.0.0.9:9091"
    monkeypatch.delenv("MLOPS_TEST_PUSHGATEWAY_PASSWORD", raising=False)
    assert resource.auth() is None  # no password known: the gateway refuses the push (a warning)
    (tmp_path / "secret").write_text("generated-password\n")
    assert resource.auth() == ("admin", "generated-password")
    monkeypatch.setenv("MLOPS_TEST_PUSHGATEWAY_PASSWORD", "from-the-environment")
    assert resource.auth() == ("admin", "from-the-environment")


@pytest.mark.unit
def test_each_materialization_is_one_registry_of_the_documented_names():
    from mlops_assets.image.build import ContainerImage
    from mlops_assets.ml.data import DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec, build_dataset
    from mlops_assets.ml_phase import CandidateSet, SelectedModel
    from mlops_assets.resources.api_deployer import DeployedApi
    from mlops_assets.resources.mlflow_registry import LoggedCandidate

    selected = SelectedModel(name="clf", version="7", model_uri="models:/clf/7", run_id="r", family="random_forest",
                             test_metrics={"f1_macro": 0.96, "log_loss": 0.1}, features=["a"], promoted=True)
    data = build_dataset(DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec())
    candidates = CandidateSet("parent", "fp", [LoggedCandidate("random_forest", "r1", "u1", {}, {"f1_macro": 0.97, "accuracy": 0.98}),
                                               LoggedCandidate("logistic_regression", "r2", "u2", {}, {"f1_macro": 0.95})], True)
    image = ContainerImage(ref="mlops-api:abc", tag="abc", model_name="clf", model_version="7", size_bytes=123_000_000)
    api = DeployedApi(url="u", metrics_url="m", model_name=selected.name, model_version=selected.version, action="deployed")
    at = 1_700_000_000.0

    def registry(asset, value, **kwargs):
        run = hooks.materialization(asset, "local", succeeded=True, at=at, duration_s=2.5, outputs={"result": value}, **kwargs)
        return _samples(pm.build_registry(run))

    base = {("mlops_pipeline_asset_last_success_timestamp_seconds", ()): at,
            ("mlops_pipeline_asset_last_failure_timestamp_seconds", ()): 0.0,
            ("mlops_pipeline_asset_duration_seconds", ()): 2.5}
    counts = data.class_counts()
    assert registry("dataset", data) == {**base, ("mlops_pipeline_dataset_rows", ()): data.table.height,
                                         ("mlops_pipeline_dataset_info", (("data_version", data.content_hash),)): 1.0,
                                         **{("mlops_pipeline_dataset_class_share", (("class", c),)): pytest.approx(n / sum(counts.values()))
                                            for c, n in counts.items()}}
    assert registry("candidate_models", candidates, retraining_period_s=86400.0) == {
        **base, ("mlops_pipeline_training_reused", ()): 1.0, ("mlops_pipeline_retraining_period_seconds", ()): 86400.0,
        ("mlops_pipeline_candidate_validation_metric", (("family", "random_forest"), ("metric", "f1_macro"))): 0.97,
        ("mlops_pipeline_candidate_validation_metric", (("family", "random_forest"), ("metric", "accuracy"))): 0.98,
        ("mlops_pipeline_candidate_validation_metric", (("family", "logistic_regression"), ("metric", "f1_macro"))): 0.95}
    champion = registry("selected_model", selected, op_config={"selection_metric": "log_loss", "quality_floor": 0.4})
    labels = (("family", selected.family), ("metric", "f1_macro"), ("model_name", selected.name), ("model_version", selected.version))
    assert champion[("mlops_pipeline_champion_test_metric", labels)] == selected.test_metrics["f1_macro"]
    assert champion[("mlops_pipeline_champion_version", (("model_name", selected.name),))] == int(selected.version)
    assert champion[("mlops_pipeline_quality_floor", (("direction", "max"), ("metric", "log_loss")))] == 0.4
    assert registry("container_image", image)[("mlops_pipeline_image_size_bytes", ())] == 123_000_000
    assert ("mlops_pipeline_image_size_bytes", ()) not in registry("container_image", ContainerImage(
        ref=None, tag=None, model_name="clf", model_version="7", skipped="no engine"))
    deployed = registry("deployed_api", api)
    assert deployed[("mlops_pipeline_deploy_duration_seconds", ())] == 2.5
    assert deployed[("mlops_pipeline_deployed_model_version", ())] == int(selected.version)
    assert deployed[("mlops_pipeline_rollbacks_total", ())] == 0 and deployed[("mlops_pipeline_last_rollback_timestamp_seconds", ())] == 0
    assert registry("tofu_state", {"api_public_ip": "127.0.0.1"}) == base


@pytest.mark.unit
def test_timestamps_and_rollbacks_are_carried_across_pushes():
    from mlops_assets.rollout import DeployFailed

    failed = DeployFailed("rolled back", version="4", reason="smoke", applied=True, rolled_back=True,
                          previous_version="3", serving="3")
    # What RayServeOnThisMachine raises: the rollback is in the Failure's (normalized) metadata.
    failure = dg.Failure(description=str(failed), metadata=failed.metadata())
    run = hooks.materialization("deployed_api", "local", succeeded=False, at=200.0, duration_s=9.0, outputs={},
                                exception=failure)
    assert run.rolled_back
    previous = {pm.LAST_SUCCESS: 100.0, pm.ROLLBACKS_TOTAL: 2.0, pm.LAST_ROLLBACK: 50.0}
    samples = _samples(pm.build_registry(run, previous))
    assert samples == {("mlops_pipeline_asset_last_success_timestamp_seconds", ()): 100.0,
                       ("mlops_pipeline_asset_last_failure_timestamp_seconds", ()): 200.0,
                       ("mlops_pipeline_rollbacks_total", ()): 3.0,
                       ("mlops_pipeline_last_rollback_timestamp_seconds", ()): 200.0}  # a failure pushes no figures
    plain = hooks.materialization("deployed_api", "local", succeeded=False, at=300.0, duration_s=1.0, outputs={},
                                  exception=dg.Failure(description="registry down"))
    assert not plain.rolled_back and pm.carried(plain, {**previous, pm.ROLLBACKS_TOTAL: 3.0})[pm.ROLLBACKS_TOTAL] == 3.0


@pytest.mark.unit
def test_a_gateway_that_is_down_is_a_warning_never_a_failed_asset(tmp_path):
    @dg.asset
    def works() -> int:
        return 1

    @dg.asset
    def breaks() -> int:
        raise dg.Failure(description="the asset's own failure")

    url = f"http://127.0.0.1:{_closed_port()}"
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize(hooks.with_pipeline_metrics([works, breaks]), instance=instance, raise_on_error=False,
                                resources={"pipeline_metrics": PipelineMetrics(target="local", gateway_url=url, timeout_s=2)})
        warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert result.output_for_node("works") == 1
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "breaks" and "the asset's own failure" in failure.event_specific_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "HOOK_ERRORED"]
    for asset in ("works", "breaks"):
        assert any(f"pipeline metrics of {asset} not pushed to the Pushgateway at {url}" in w for w in warnings), warnings


@pytest.mark.unit
def test_the_local_target_pushes_only_to_the_gateway_of_its_own_home(tmp_path):
    from mlops_assets.resources.prometheus import LocalPrometheus

    resource = LocalPipelineMetrics(target="local", prometheus=LocalPrometheus(state_dir=str(tmp_path), pushgateway_port=_closed_port()))
    log = type("Log", (), {"messages": [], "warning": lambda self, m: self.messages.append(m), "info": print})()
    assert resource.push(pm.Materialization("dataset", "local", True, time.time()), log) is None
    assert "is not running" in log.messages[0] and "the asset is not affected" in log.messages[0]


@pytest.mark.service
def test_a_real_materialization_lands_in_debians_pushgateway_and_survives_a_restart(tmp_path):
    from mlops_assets.assets.data import dataset
    from mlops_assets.resources.data_source import DataSource
    from mlops_assets.resources.prometheus import LocalPrometheus

    port, = free_ports(1)
    prometheus = LocalPrometheus(state_dir=str(tmp_path / "prometheus"), pushgateway_port=port, node_exporter=False)
    resource = LocalPipelineMetrics(target="local", prometheus=prometheus)
    assert prometheus.ensure_pushgateway() is True and prometheus.ensure_pushgateway() is False
    try:
        (tmp_path / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            result = dg.materialize(hooks.with_pipeline_metrics([dataset]), instance=instance, resources={
                "pipeline_metrics": resource, "data_source": DataSource(location="palmerpenguins", target_column="species")})
        assert result.success
        held = pm.read_group(prometheus.pushgateway_url, {"asset": "dataset", "target": "local"})
        assert held[pm.DATASET_ROWS] == result.output_for_node("dataset").table.height
        assert 0 < held[pm.LAST_SUCCESS] <= time.time() and held[pm.LAST_FAILURE] == 0 and held[pm.DURATION] > 0
        rollback = pm.Materialization("deployed_api", "local", False, time.time(), rolled_back=True)
        assert pm.push(prometheus.pushgateway_url, rollback, pytest.fail).pushed
        assert pm.push(prometheus.pushgateway_url, rollback, pytest.fail).samples[pm.ROLLBACKS_TOTAL] == 2
        # Stopped (SIGTERM: it writes its persistence file) and started again: the counter is kept.
        pid = prometheus.pushgateway_pid()
        prometheus.stop()
        assert prometheus.pushgateway_pid() is None and not _alive(pid)
        prometheus.ensure_pushgateway()
        deployed = pm.read_group(prometheus.pushgateway_url, {"asset": "deployed_api", "target": "local"})
        assert deployed[pm.ROLLBACKS_TOTAL] == 2 and deployed[pm.LAST_ROLLBACK] > 0
        assert pm.read_group(prometheus.pushgateway_url, {"asset": "dataset", "target": "local"})[pm.DATASET_ROWS] > 0
    finally:
        prometheus.stop()


@pytest.mark.service
def test_a_gateway_with_basic_auth_takes_pushes_with_the_password_only(tmp_path):
    """The monitoring host's set-up (the pushgateway role): Debian's Pushgateway with a web
    config file holding a bcrypt hash. A push with the password lands; one without is refused
    and is a warning."""
    import subprocess

    import bcrypt
    import requests

    port, = free_ports(1)
    (tmp_path / "web.yml").write_text(f'basic_auth_users:\n  admin: "{bcrypt.hashpw(b"gateway-password", bcrypt.gensalt(4)).decode()}"\n')
    gateway = subprocess.Popen(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
                                f"--web.config.file={tmp_path / 'web.yml'}", "--log.level=warn"])
    url, auth = f"http://127.0.0.1:{port}", ("admin", "gateway-password")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/-/ready", auth=auth, timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert requests.get(f"{url}/-/ready", timeout=2).status_code == 401
        run = pm.Materialization("dataset", "aws", True, time.time(), dataset_rows=344)
        warnings: list[str] = []
        assert not pm.push(url, run, warnings.append).pushed and "401" in warnings[0]
        assert pm.push(url, run, pytest.fail, auth=auth).pushed
        assert pm.read_group(url, {"asset": "dataset", "target": "aws"}, auth=auth)[pm.DATASET_ROWS] == 344
    finally:
        gateway.terminate()
        gateway.wait(10)


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
