"""Monitoring as code, without live services: the committed files equal a fresh render,
promtool accepts the config and the rules and their unit tests pass, every alert is tested
firing and not firing, the dashboards load back into grafana-foundation-sdk."""

import json

import pytest
import yaml

from mlops_assets.monitoring import API_JOB, promql, render
from mlops_assets.monitoring import rule_tests
from mlops_assets.monitoring.rules import alert_names, rule_groups
from mlops_assets.resources.prometheus import LocalPrometheus
from mlops_assets.settings import PROJECT_ROOT

pytestmark = pytest.mark.service

COMMITTED = PROJECT_ROOT / "grafana_dashboards"


@pytest.fixture(scope="module")
def profile():
    return render.default_profile()


@pytest.fixture(scope="module")
def fresh(profile):
    return render.render_all(profile)


@pytest.fixture(scope="module")
def promtool(tmp_path_factory):
    return LocalPrometheus(state_dir=str(tmp_path_factory.mktemp("prometheus")))


def test_committed_files_equal_a_fresh_render(fresh):
    committed = {
        str(p.relative_to(COMMITTED)): p.read_text()
        for p in COMMITTED.rglob("*")
        if p.is_file() and p.relative_to(COMMITTED).parts[0] in render.OWNED_FOLDERS
    }
    assert sorted(committed) == sorted(fresh), "run `make dashboards` and commit grafana_dashboards/"
    stale = [path for path, text in fresh.items() if committed[path] != text]
    assert not stale, f"grafana_dashboards/ differs from a fresh render in {stale}: run `make dashboards` and commit"


def test_render_is_deterministic(profile, fresh):
    assert render.content_hash(render.render_all(profile)) == render.content_hash(fresh)


def test_promtool_accepts_the_config_and_rules(promtool):
    out = promtool.check_config(COMMITTED / render.CONFIG_FILE)
    assert "SUCCESS" in out
    rules = sorted((COMMITTED / render.RULES_DIR).glob("*.yml"))
    assert len(rules) == 3  # api, model, pipeline
    assert "SUCCESS" in promtool.check_rules(*rules)


def test_amtool_accepts_the_alertmanager_config_with_and_without_receivers(tmp_path, profile):
    from mlops_assets.monitoring.alertmanager_config import AlertRouting, Smtp
    from mlops_assets.resources.prometheus import Amtool

    assert "SUCCESS" in Amtool().check_config(COMMITTED / render.ALERTMANAGER_FILE)  # no receiver: null
    routing = AlertRouting(webhook_url="http://127.0.0.1:9/hook",
                           smtp=Smtp("smtp.example.org:587", "am@example.org", "ops@example.org", "am", str(tmp_path / "pw")))
    render.write(render.render_all(profile, render.RenderSettings(routing=routing)), tmp_path)
    assert "3 receivers" in Amtool().check_config(tmp_path / render.ALERTMANAGER_FILE)  # null, critical, warning
    assert (tmp_path / render.ALERTMANAGER_FILE).stat().st_mode & 0o777 == 0o600


def test_amtool_refuses_a_broken_alertmanager_config(tmp_path, fresh):
    from mlops_assets.resources.prometheus import Amtool, PrometheusError

    render.write(fresh, tmp_path)
    config = tmp_path / render.ALERTMANAGER_FILE
    # The root route names a receiver that does not exist.
    config.write_text(config.read_text().replace("  receiver: 'null'\n  group_by", "  receiver: nobody\n  group_by"))
    with pytest.raises(PrometheusError, match=r"amtool check-config .*\n.*undefined receiver \"nobody\""):
        Amtool().check_config(config)


def test_the_rendered_prometheus_config_sends_alerts_to_the_alertmanager(fresh):
    alerting = yaml.safe_load(fresh[render.CONFIG_FILE])["alerting"]
    assert alerting == {"alertmanagers": [{"static_configs": [{"targets": list(render.DEFAULT_ALERTMANAGER_TARGETS)}]}]}


def test_promtool_rule_unit_tests_pass(promtool):
    assert "SUCCESS" in promtool.test_rules(COMMITTED / render.TESTS_FILE)


def test_rule_unit_tests_catch_a_broken_threshold(promtool, tmp_path, fresh):
    # The unit tests are only worth something if a wrong rule fails them.
    render.write(fresh, tmp_path)
    model_rules = tmp_path / render.RULES_DIR / "mlops-model.rules.yml"
    model_rules.write_text(model_rules.read_text().replace("tvd1h > 0.25", "tvd1h > 0.99"))
    with pytest.raises(Exception, match="MlopsModelPredictionDrift"):
        promtool.test_rules(tmp_path / render.TESTS_FILE)


def test_pipeline_rule_unit_tests_catch_a_broken_rule(promtool, tmp_path, fresh):
    render.write(fresh, tmp_path)
    rules = tmp_path / render.RULES_DIR / "mlops-pipeline.rules.yml"
    rules.write_text(rules.read_text().replace("> 2 * mlops_pipeline_retraining_period_seconds", "> 4 * mlops_pipeline_retraining_period_seconds")
                     .replace("< 3600", "< 60"))
    with pytest.raises(Exception, match="MlopsPipelineRetrainingStale") as failed:
        promtool.test_rules(tmp_path / render.TESTS_FILE)
    assert "MlopsPipelineRollback" in str(failed.value)


def test_every_alert_is_tested_firing_and_not_firing(profile):
    document = yaml.safe_load((COMMITTED / render.TESTS_FILE).read_text())
    covered = rule_tests.tested_alerts(document)
    for alert in alert_names(rule_groups(profile)):
        assert covered.get(alert) == {"firing", "not firing"}, f"{alert}: tested {covered.get(alert)}"


def test_alerts_follow_the_kubernetes_mixin_style():
    for path in (COMMITTED / render.RULES_DIR).glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    assert ":" in rule["record"], f"recording rule {rule['record']} is not level:metric:operations"
                    continue
                assert rule["alert"][0].isupper() and rule["for"]
                assert rule["labels"]["severity"] in ("critical", "warning", "info")
                assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    api_alerts = yaml.safe_load((COMMITTED / render.RULES_DIR / "mlops-api.rules.yml").read_text())
    assert any(r.get("expr", "").startswith("absent(") for g in api_alerts["groups"] for r in g["rules"])


def test_training_class_ratios_come_from_the_dataset(profile):
    model_rules = yaml.safe_load((COMMITTED / render.RULES_DIR / "mlops-model.rules.yml").read_text())
    ratios = {
        r["labels"]["predicted_class"]: float(r["expr"][len("vector(") : -1])
        for g in model_rules["groups"]
        for r in g["rules"]
        if r.get("record") == "mlops_model:training_class_ratio"
    }
    assert set(ratios) == {"Adelie", "Chinstrap", "Gentoo"}  # palmerpenguins' species
    assert sum(ratios.values()) == pytest.approx(1, abs=1e-4)
    assert ratios == pytest.approx(profile.class_ratios, abs=1e-5)


def test_scrape_config_comes_from_the_targets(profile):
    files = render.render_all(profile, render.RenderSettings(api_targets=("10.0.0.5:8080", "10.0.0.6:8080"), host_targets=("10.0.0.5:9100",)))
    config = yaml.safe_load(files[render.CONFIG_FILE])
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs == {API_JOB: ["10.0.0.5:8080", "10.0.0.6:8080"], "node": ["10.0.0.5:9100"]}
    assert config["rule_files"] == ["rules/*.yml"]
    # The Pushgateway (local target): scraped with honor_labels, so pushed series keep their job.
    files = render.render_all(profile, render.RenderSettings(pushgateway_targets=("127.0.0.1:9091",)))
    (gateway,) = [job for job in yaml.safe_load(files[render.CONFIG_FILE])["scrape_configs"] if job["job_name"] == "mlops-pushgateway"]
    assert gateway["honor_labels"] is True and gateway["static_configs"] == [{"targets": ["127.0.0.1:9091"]}]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    datasource = yaml.safe_load((COMMITTED / "provisioning/datasources/mlops-assets.yaml").read_text())
    (ds,) = datasource["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "mlops-prometheus" and ds["url"] == "http://127.0.0.1:9090"
    provider = yaml.safe_load((COMMITTED / "provisioning/dashboards/mlops-assets.yaml").read_text())
    (p,) = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"] == "/var/lib/grafana/dashboards/mlops-assets"


@pytest.mark.parametrize("name", ["mlops-api.json", "mlops-model.json", "mlops-hosts.json", "mlops-pipeline.json"])
def test_dashboard_json_loads_back_into_the_sdk(name):
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

    register_default_plugins()
    text = (COMMITTED / "dashboards" / name).read_text()
    raw = json.loads(text)
    dashboard = Dashboard.from_json(raw)
    # A round trip through the typed model loses nothing: every field is one the SDK knows.
    assert json.loads(JSONEncoder(sort_keys=True).encode(dashboard)) == raw
    assert text == json.dumps(raw, sort_keys=True, indent=2) + "\n"  # sorted keys
    assert dashboard.uid == name.removesuffix(".json")
    (variable,) = dashboard.templating.list_val
    assert variable.name == "datasource" and variable.type_val == "datasource" and variable.query == "prometheus"
    panels = [p for p in dashboard.panels if not isinstance(p, RowPanel)]
    assert panels and all(isinstance(p, Panel) for p in panels)
    assert [p.id_val for p in dashboard.panels] == list(range(1, len(dashboard.panels) + 1))
    for panel in panels:
        assert _uid(panel.datasource) == "${datasource}" and panel.title and panel.description
        assert panel.targets, f"{panel.title} has no query"
        for target in panel.targets:
            assert _uid(target.datasource) == "${datasource}"
            assert promql.metric_names(target.expr), f"{panel.title}: {target.expr} reads no metric"
        grid = panel.grid_pos
        assert grid.x + grid.w <= 24


def _uid(datasource) -> str:
    return datasource["uid"] if isinstance(datasource, dict) else datasource.uid


def test_promql_selectors():
    expr = (
        'sum by (status_code) (rate(a_total{job="x", status_code=~"5.."}[$__rate_interval]))'
        " / ignoring(status_code) group_left sum(rate(a_total[5m])) > 1e3 and on() b:c:d offset 5m"
        ' or histogram_quantile(0.9, sum by (le) (rate(h_bucket{l="{}"}[1m]))) unless absent(up)'
    )
    assert [s.text() for s in promql.selectors(expr)] == [
        'a_total{job="x", status_code=~"5.."}',
        "a_total",
        "b:c:d",
        'h_bucket{l="{}"}',
        "up",
    ]


def test_training_feature_reference_uses_rays_bucket_midpoints():
    # Ray's metrics agent exports histogram sums rebuilt from bucket midpoints; the training
    # reference must bin the same way, or live means never match training means.
    from ray._private.telemetry.open_telemetry_metric_recorder import OpenTelemetryMetricRecorder

    from mlops_assets.monitoring.profile import as_exported, ray_bucket_midpoints
    from mlops_assets.serving.metrics import FEATURE_VALUE_BUCKETS

    recorder = OpenTelemetryMetricRecorder()
    recorder.register_histogram_metric("mlops_test_feature_value", "test", FEATURE_VALUE_BUCKETS)
    assert ray_bucket_midpoints(FEATURE_VALUE_BUCKETS) == recorder.get_histogram_bucket_midpoints("mlops_test_feature_value")
    exported = as_exported([-3, 0.01, 0.011, 200, 201, 1e9], [0.01, 0.02, 200, 500])
    assert list(exported) == pytest.approx([0.005, 0.005, 0.015, 100.01, 350, 1000])
