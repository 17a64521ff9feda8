"""The monitoring host's "unchanged" shortcut (resources/monitoring.py `healthy_targets`): when
`dashboards` may skip Ansible, and how long it gives a target that deployed_api just restarted.
A scripted Prometheus and a fake clock: milliseconds. The live path (a real Prometheus on the
rehearsal's monitoring host) is in test_rehearsal_e2e.py."""

from __future__ import annotations

import pytest

from mlops_assets.resources.monitoring import healthy_targets, seconds_of
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
