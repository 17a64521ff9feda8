"""Alertmanager's configuration from the settings, without Alertmanager: routes by severity to
the configured receivers, the null receiver when none is configured, the timings a test
shortens, and readable failures naming the variable for values that cannot work."""

import dagster as dg
import pytest
import yaml

from mlops_assets.monitoring import alertmanager_config as am
from mlops_assets.resources.monitoring import LocalMonitoring
from mlops_assets.resources.prometheus import LocalPrometheus
from mlops_assets.settings import load_settings
from mlops_assets.targets import resources_for

pytestmark = pytest.mark.unit


def _document(routing: am.AlertRouting) -> dict:
    return yaml.safe_load(am.alertmanager_config(routing))


def _monitoring(tmp_path, **fields) -> LocalMonitoring:
    return LocalMonitoring(out_dir=str(tmp_path), promtool_record=str(tmp_path / "passed.json"),
                           prometheus=LocalPrometheus(state_dir=str(tmp_path / "prometheus")), **fields)


def test_without_a_receiver_every_alert_goes_to_the_null_receiver_and_metadata_says_so():
    document = _document(am.AlertRouting())
    assert document["receivers"] == [{"name": "null"}]
    assert {route["receiver"] for route in document["route"]["routes"]} == {"null"}
    assert am.describe(am.AlertRouting()).startswith("no receiver configured")


def test_each_severity_routes_to_its_receiver_with_its_own_timing_and_resolved_notices():
    routing = am.AlertRouting(webhook_url="http://hooks.internal:9000/alert?token=s3cret",
                              smtp=am.Smtp("smtp.example.org:587", "am@example.org", "ops@example.org", "am", "/run/pw"))
    document = _document(routing)
    routes = {route["matchers"][0]: route for route in document["route"]["routes"]}
    assert routes['severity="critical"']["receiver"] == "mlops-critical"
    assert routes['severity="warning"']["receiver"] == "mlops-warning"
    assert routes['severity="critical"']["repeat_interval"] == "1h"
    assert routes['severity="warning"']["group_wait"] == "2m"
    critical = next(r for r in document["receivers"] if r["name"] == "mlops-critical")
    assert critical["webhook_configs"] == [{"url": routing.webhook_url, "send_resolved": True}]
    email = critical["email_configs"][0]
    assert email["auth_password_file"] == "/run/pw" and "auth_password" not in email and email["send_resolved"] is True
    # Metadata shows where alerts go, never the webhook's path or token.
    described = am.describe(routing)
    assert "http://hooks.internal:9000" in described and "s3cret" not in described and "ops@example.org" in described


def test_timings_move_per_severity_and_the_target_down_for_is_shortened_for_tests():
    timings, target_down_for = am.parse_timings("group_wait=5s, critical.repeat_interval=30m,target_down_for=15s")
    assert timings["critical"] == {"group_wait": "5s", "group_interval": "5m", "repeat_interval": "30m"}
    assert timings["warning"]["group_wait"] == "5s" and timings["warning"]["repeat_interval"] == "12h"
    assert target_down_for == "15s"
    assert am.parse_timings("") == (am.DEFAULT_TIMINGS, am.TARGET_DOWN_FOR)


@pytest.mark.parametrize("raw, message", [
    ("group_wait=soon", "is not a duration"),
    ("info.group_wait=5s", "names no timing"),
    ("repeat=1h", "names no timing"),
    ("critical.target_down_for=1m", "names no timing"),
])
def test_wrong_timings_name_the_variable(raw, message):
    with pytest.raises(ValueError, match=message) as failed:
        am.parse_timings(raw)
    assert "MLOPS_ALERT_TIMINGS" in str(failed.value)


def test_a_missing_webhook_url_is_no_error_and_an_invalid_one_is_a_failure_naming_the_setting(tmp_path):
    routing, target_down_for = _monitoring(tmp_path).alert_routing()
    assert not routing.has_receiver and target_down_for == "2m"
    with pytest.raises(dg.Failure, match="MLOPS_ALERT_WEBHOOK_URL='hooks.internal/alert' is not an http"):
        _monitoring(tmp_path, alert_webhook_url="hooks.internal/alert").alert_routing()


def test_smtp_needs_all_three_settings_and_a_host_port(tmp_path):
    with pytest.raises(dg.Failure, match="MLOPS_ALERT_SMTP_TO not set"):
        _monitoring(tmp_path, alert_smtp={"smarthost": "smtp.example.org:587", "from": "a@example.org"}).alert_routing()
    with pytest.raises(dg.Failure, match="MLOPS_ALERT_SMTP_SMARTHOST='smtp.example.org' is not host:port"):
        _monitoring(tmp_path, alert_smtp={"smarthost": "smtp.example.org", "from": "a@b.c", "to": "d@e.f"}).alert_routing()


def test_the_smtp_password_goes_to_a_private_file_never_into_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_ALERT_SMTP_PASSWORD", "hunter2-hunter2")
    monitoring = _monitoring(tmp_path, alert_smtp={"smarthost": "smtp.example.org:587", "from": "a@b.c", "to": "d@e.f"})
    routing, _ = monitoring.alert_routing()
    password_file = tmp_path / "prometheus" / "alertmanager" / "smtp_password"
    assert routing.smtp.password_file == str(password_file)
    assert password_file.read_text() == "hunter2-hunter2" and password_file.stat().st_mode & 0o777 == 0o600
    assert "hunter2" not in am.alertmanager_config(routing)


def test_settings_reach_the_monitoring_resource_of_every_target(tmp_path, monkeypatch):
    env = {"MLOPS_HOME": str(tmp_path), "MLOPS_ALERT_WEBHOOK_URL": "http://hooks.internal:9000/a",
           "MLOPS_ALERT_TIMINGS": "group_wait=1s", "MLOPS_ALERT_SMTP_SMARTHOST": "smtp.example.org:25"}
    monkeypatch.setenv("MLOPS_ALERT_WEBHOOK_URL", env["MLOPS_ALERT_WEBHOOK_URL"])  # an EnvVar: read at run time
    for target in ("local", "sim"):
        monitoring = resources_for(load_settings({**env, "MLOPS_TARGET": target}))["monitoring"]
        assert monitoring.alert_timings == "group_wait=1s"
        assert monitoring.alert_smtp["smarthost"] == "smtp.example.org:25"
        assert "hooks.internal" not in repr(load_settings({**env, "MLOPS_TARGET": target}))
