"""The monitoring host's "unchanged" shortcut (resources/monitoring.py `healthy_targets`): when
`dashboards` may skip Ansible, and how long it gives a target that deployed_api just restarted;
then which plays `provision` runs when the files changed (the new files alone, or the whole base
plays).
A scripted Prometheus and a fake clock: milliseconds. The live path (a real Prometheus on the
rehearsal's monitoring host) is in test_rehearsal_e2e.py."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.resources import monitoring as monitoring_module
from mlops_assets.resources.ansible import Ansible, PlaybookResult
from mlops_assets.resources.monitoring import MonitoringHost, Rendered, healthy_targets, seconds_of
from mlops_assets.resources.prometheus import PrometheusError

pytestmark = pytest.mark.unit

API, NODE = "http://10.0.0.4:8080/metrics", "http://10.0.0.4:9100/metrics"
EXPECTED = ("10.0.0.4:8080", "10.0.0.4:9100")


class ScriptedPrometheus:
    """Answers /api/v1/rules with `rules` rules and /api/v1/targets with the next scripted
    target health on each call (the last one repeats)."""

    def __init__(self, *answers: dict[str, bool] | Exception, rules: int = 3):
        self.answers, self.rules, self.calls = list(answers), rules, 0

    def rule_groups(self):
        return [{"rules": [{}] * self.rules}]

    def targets_up(self):
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def check(http, settle_s=25.0):
    clock = FakeClock()
    return healthy_targets(http, 3, EXPECTED, settle_s=settle_s, clock=clock, sleep=clock.sleep), clock.now


def test_a_target_restarted_moments_ago_is_waited_for_not_reprovisioned():
    down = {API: False, NODE: True}
    http = ScriptedPrometheus(down, down, down, {API: True, NODE: True})
    up, waited = check(http)
    assert up == {API: True, NODE: True} and waited == 3.0


def test_a_target_still_down_after_the_settle_time_means_provisioning():
    up, waited = check(ScriptedPrometheus({API: False, NODE: True}))
    assert up is None and waited == 25.0


@pytest.mark.parametrize("http", [
    ScriptedPrometheus({API: True}),  # node_exporter is not scraped: the configuration lacks it
    ScriptedPrometheus({API: True, NODE: True}, rules=2),  # a rule file missing
    ScriptedPrometheus(PrometheusError("connection refused")),  # Prometheus down
], ids=["target-missing", "rule-missing", "no-answer"])
def test_what_only_provisioning_fixes_is_answered_at_once(http):
    assert check(http) == (None, 0.0)


def test_every_target_up_answers_at_once():
    assert check(ScriptedPrometheus({API: True, NODE: True}), settle_s=0) == ({API: True, NODE: True}, 0.0)


def test_prometheus_durations():
    assert [seconds_of(d) for d in ("15s", "1m30s", "500ms", "2h")] == [15, 90, 0.5, 7200]
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        seconds_of("15 seconds")


# --- which plays `provision` runs on the monitoring host ----------------------------------------

INVENTORY = {"all": {"children": {"api": {"hosts": {"api": {"ansible_host": "10.0.0.4"}}},
                                  "monitoring": {"hosts": {"monitoring": {"ansible_host": "10.0.0.5"}}}}}}
UP = {API: True, NODE: True, "http://10.0.0.5:9100/metrics": True}


class RecordingAnsible(Ansible):
    """Records the tags of each run instead of running Ansible; the password is a fixed secret."""

    def secret(self, name):
        return "a-password-for-tests"

    def run_playbook(self, inventory, playbook="site.yml", **kwargs):
        calls.append(kwargs["tags"])
        return PlaybookResult(playbook, "successful", 0, {"monitoring": {"ok": 1, "changed": 1}})


calls: list = []


def provision(monkeypatch, tmp_path, *, prometheus_answers: bool, targets: list):
    calls.clear()
    http = ScriptedPrometheus(*targets, rules=3)
    http.url, http.auth = "http://10.0.0.5:9090", ("admin", "a-password-for-tests")
    http.wait_until = lambda predicate, timeout_s, what, interval_s=0.5: predicate() or (_ for _ in ()).throw(
        PrometheusError(f"timed out waiting for {what}"))
    monkeypatch.setattr(MonitoringHost, "prometheus_http", lambda self, url: http)
    monkeypatch.setattr(monitoring_module, "answers", lambda h, timeout_s=5.0: prometheus_answers)
    host = MonitoringHost(out_dir=str(tmp_path), promtool_record=str(tmp_path / "record.json"),
                          ansible=RecordingAnsible(work_dir=str(tmp_path)))
    rendered = Rendered.of(Path(tmp_path), "new-hash", 3, "10.0.0.4:8080")
    return host.provision(rendered, previous={"content_hash": "old-hash"}, api_prometheus_url=http.url,
                          inventory=INVENTORY, targets_up_timeout_s=1, log=logging.getLogger("test"))


def test_new_files_for_a_prometheus_that_answers_run_only_the_monitoring_config_tag(monkeypatch, tmp_path):
    result = provision(monkeypatch, tmp_path, prometheus_answers=True, targets=[UP])
    assert calls == [["monitoring-config"]]
    assert result.details["provisioned_by"] == "ansible (site.yml, tag monitoring-config, monitoring host)"


def test_a_prometheus_that_does_not_answer_gets_the_whole_base_plays(monkeypatch, tmp_path):
    provision(monkeypatch, tmp_path, prometheus_answers=False, targets=[UP])
    assert calls == [["hosts"]]


def test_targets_still_down_after_the_files_alone_fall_back_to_the_whole_base_plays(monkeypatch, tmp_path):
    down = {**UP, "http://10.0.0.5:9100/metrics": False}
    result = provision(monkeypatch, tmp_path, prometheus_answers=True, targets=[down, UP])
    assert calls == [["monitoring-config"], ["hosts"]]
    assert result.details["provisioned_by"] == "ansible (site.yml, tag hosts, monitoring host)"


def test_targets_down_after_the_whole_base_plays_fail_naming_them(monkeypatch, tmp_path):
    down = {**UP, "http://10.0.0.5:9100/metrics": False}
    with pytest.raises(dg.Failure, match="every host's node_exporter"):
        provision(monkeypatch, tmp_path, prometheus_answers=False, targets=[down])
    assert calls == [["hosts"]]
