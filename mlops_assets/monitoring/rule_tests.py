"""`promtool test rules` cases for every alert: each one firing, and not firing.

Built from the same rule dictionaries as the rule files (expected annotations are the rules'
own, with the test series' labels filled in) and from the same training profile, so the
drift cases follow the real class distribution. Rendered next to the rules and run by the
`dashboards` asset and by the tests."""

from __future__ import annotations

import math
import re

from mlops_assets.serving import APP_NAME, DEPLOYMENT_NAME

from . import API_JOB
from . import pipeline_metrics as pm
from .profile import TrainingProfile
from .promql import seconds_of
from .rules import AlertSettings, rule_groups

INSTANCE = "api-host:8080"
JOB = {"job": API_JOB}


def _selector(name: str, **labels: str) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _series(name: str, values: str, **labels: str) -> dict:
    return {"series": _selector(name, **labels), "values": values}


class _Expect:
    """Expected alerts, with annotations taken from the rules themselves."""

    def __init__(self, groups: dict[str, dict]) -> None:
        self.rules: dict[str, list[dict]] = {}
        for doc in groups.values():
            for group in doc["groups"]:
                for rule in group["rules"]:
                    if "alert" in rule:
                        self.rules.setdefault(rule["alert"], []).append(rule)

    def alert(self, name: str, series_labels: dict[str, str] | None = None, **rule_labels: str) -> dict:
        candidates = [r for r in self.rules[name] if all(r["labels"].get(k) == v for k, v in rule_labels.items())]
        (rule,) = candidates
        labels = {**(series_labels or {}), **rule["labels"]}
        annotations = {
            key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
            for key, text in rule["annotations"].items()
        }
        return {"exp_labels": labels, "exp_annotations": annotations}


def _case(name: str, series: list[dict], checks: list[tuple[str, str, list[dict]]]) -> dict:
    return {
        "name": name,
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": exp} for t, a, exp in checks],
    }


def _minutes(duration: str) -> int:
    """A Prometheus duration (30s, 2m, 1h30m), in whole minutes rounded up."""
    return math.ceil(seconds_of(duration) / 60)


def target_cases(expect: _Expect, settings: AlertSettings) -> list[dict]:
    target = {**JOB, "instance": INSTANCE}
    # Scrapes fail from minute 6: pending from then, firing once `for` has passed.
    wait = _minutes(settings.target_down_for)
    return [
        _case(
            f"target down: fires after {settings.target_down_for} of failed scrapes, not before",
            [_series("up", "1x5 0x15", **target)],
            [
                ("5m", "MlopsApiTargetDown", []),
                (f"{5 + wait}m", "MlopsApiTargetDown", []),
                (f"{8 + wait}m", "MlopsApiTargetDown", [expect.alert("MlopsApiTargetDown", target)]),
            ],
        ),
        _case(
            "target absent: fires when no API target exists, not while one is scraped",
            [_series("up", "1x20", job="other", instance="elsewhere:9100")],
            [("10m", "MlopsApiTargetAbsent", [expect.alert("MlopsApiTargetAbsent", JOB)])],
        ),
        _case(
            "target present: no absent alert",
            [_series("up", "1x20", **target)],
            [("10m", "MlopsApiTargetAbsent", [])],
        ),
    ]


def _requests(ok_per_min: int, errors_per_min: int) -> list[dict]:
    labels = {**JOB, "application": APP_NAME, "instance": INSTANCE}
    return [
        _series("ray_serve_num_http_requests_total", f"0+{ok_per_min}x420", status_code="200", **labels),
        _series("ray_serve_num_http_requests_total", f"0+{errors_per_min}x420", status_code="500", **labels),
        _series("ray_serve_num_http_requests_total", "0+5x420", status_code="422", **labels),
    ]


def burn_rate_cases(expect: _Expect) -> list[dict]:
    fast = expect.alert("MlopsApiErrorBudgetBurn", long="1h")
    slow = expect.alert("MlopsApiErrorBudgetBurn", long="6h")
    return [
        _case(
            "10% of requests fail: the fast burn fires within minutes, the slow one after its 15m",
            _requests(90, 10),
            [("1m", "MlopsApiErrorBudgetBurn", []), ("10m", "MlopsApiErrorBudgetBurn", [fast]), ("40m", "MlopsApiErrorBudgetBurn", [fast, slow])],
        ),
        _case(
            "5% of requests fail: only the slow burn fires",
            _requests(95, 5),
            [("10m", "MlopsApiErrorBudgetBurn", []), ("40m", "MlopsApiErrorBudgetBurn", [slow])],
        ),
        _case(
            "0.1% of requests fail (within the 0.5% budget): no burn alert",
            _requests(999, 1),
            [("40m", "MlopsApiErrorBudgetBurn", []), ("6h", "MlopsApiErrorBudgetBurn", [])],
        ),
    ]


def _latency(le_counts: dict[str, int]) -> list[dict]:
    labels = {**JOB, "instance": INSTANCE, "route": "/predict"}
    return [
        _series("ray_mlops_api_request_latency_seconds_bucket", f"0+{count}x40", le=le, **labels)
        for le, count in le_counts.items()
    ]


def latency_cases(expect: _Expect, settings: AlertSettings) -> list[dict]:
    slow_bucket = f"{settings.latency_p99_slo_s * 4:g}"
    fast_bucket = f"{settings.latency_p99_slo_s / 4:g}"
    return [
        _case(
            "every request slower than the SLO: p99 alert after 10m",
            _latency({fast_bucket: 0, slow_bucket: 100, "+Inf": 100}),
            [("5m", "MlopsApiLatencyP99High", []), ("20m", "MlopsApiLatencyP99High", [expect.alert("MlopsApiLatencyP99High")])],
        ),
        _case(
            "every request well within the SLO: no alert",
            _latency({fast_bucket: 100, slow_bucket: 100, "+Inf": 100}),
            [("20m", "MlopsApiLatencyP99High", [])],
        ),
    ]


def no_predictions_cases(expect: _Expect, settings: AlertSettings) -> list[dict]:
    target = {**JOB, "instance": INSTANCE}
    predictions = {**target, "model_version": "1", "predicted_class": "a"}
    return [
        _case(
            "API up, no prediction counter at all: fires",
            [_series("up", "1x60", **target)],
            [("3m", "MlopsApiNoPredictions", []), ("10m", "MlopsApiNoPredictions", [expect.alert("MlopsApiNoPredictions")])],
        ),
        _case(
            "API up, counter flat: fires",
            [_series("up", "1x60", **target), _series("ray_mlops_api_predictions_total", "50x60", **predictions)],
            [("10m", "MlopsApiNoPredictions", [expect.alert("MlopsApiNoPredictions")])],
        ),
        _case(
            "API up and predicting: no alert",
            [_series("up", "1x60", **target), _series("ray_mlops_api_predictions_total", "0+10x60", **predictions)],
            [("10m", "MlopsApiNoPredictions", []), ("50m", "MlopsApiNoPredictions", [])],
        ),
    ]


def replica_cases(expect: _Expect) -> list[dict]:
    target = {**JOB, "instance": INSTANCE}
    labels = {**target, "application": APP_NAME, "deployment": DEPLOYMENT_NAME}
    replica = "ray_serve_replica_processing_queries"
    return [
        _case(
            "API host up, replicas stop reporting: fires 2m after their last report is 1m old",
            [_series("up", "1x20", **target), _series(replica, "0x3", replica="a", **labels), _series(replica, "1x3", replica="b", **labels)],
            [("4m", "MlopsApiNoReplicas", []), ("9m", "MlopsApiNoReplicas", [expect.alert("MlopsApiNoReplicas")])],
        ),
        _case(
            "two replicas reporting: no alert",
            [_series("up", "1x12", **target), _series(replica, "0x12", replica="a", **labels), _series(replica, "3x12", replica="b", **labels)],
            [("9m", "MlopsApiNoReplicas", [])],
        ),
        _case(
            "API host down: the target alert speaks, not this one",
            [_series("up", "0x12", **target)],
            [("9m", "MlopsApiNoReplicas", [])],
        ),
    ]


def _predictions(per_class_per_min: dict[str, int]) -> list[dict]:
    labels = {**JOB, "instance": INSTANCE, "model_version": "1"}
    return [
        _series("ray_mlops_api_predictions_total", f"0+{rate}x90", predicted_class=label, **labels)
        for label, rate in sorted(per_class_per_min.items())
    ]


def drift_cases(expect: _Expect, profile: TrainingProfile) -> list[dict]:
    rarest = min(profile.class_counts, key=lambda label: (profile.class_counts[label], label))
    return [
        _case(
            f"only the rarest training class ({rarest}) is predicted: drift alert",
            _predictions({rarest: 20}),
            [("10m", "MlopsModelPredictionDrift", []), ("40m", "MlopsModelPredictionDrift", [expect.alert("MlopsModelPredictionDrift")])],
        ),
        _case(
            "predictions in the training proportions: no drift alert",
            _predictions(dict(profile.class_counts)),
            [("40m", "MlopsModelPredictionDrift", []), ("80m", "MlopsModelPredictionDrift", [])],
        ),
        _case(
            "too few predictions to judge: no drift alert",
            _predictions({rarest: 1}),
            [("40m", "MlopsModelPredictionDrift", [])],
        ),
    ]


def _pipeline(asset: str, **labels: str) -> dict[str, str]:
    return {"job": pm.JOB, "asset": asset, "target": "local", **labels}


def pipeline_cases(expect: _Expect) -> list[dict]:
    """The pipeline's alerts over pushed series (promtool's time() is the evaluation time,
    from 0): timestamps are seconds into the test."""
    training = _pipeline("candidate_models")
    champion = _pipeline("selected_model", model_name="m", model_version="3", family="random_forest")
    floor = _pipeline("selected_model", metric="f1_macro", direction="min")
    deployed = _pipeline("deployed_api")
    dataset = _pipeline("dataset")
    return [
        _case(
            "retraining 1m in, schedule every 10m: fresh at 15m, stale (over 20m) and firing after its 10m at 40m",
            [_series(pm.LAST_SUCCESS, "60x60", **training), _series(pm.RETRAINING_PERIOD, "600x60", **training)],
            [("15m", "MlopsPipelineRetrainingStale", []),
             ("40m", "MlopsPipelineRetrainingStale", [expect.alert("MlopsPipelineRetrainingStale", training)])],
        ),
        _case(
            "retrained every 5m on a 10m schedule: never stale",
            [_series(pm.LAST_SUCCESS, "0+300x12", **training), _series(pm.RETRAINING_PERIOD, "600x60", **training)],
            [("40m", "MlopsPipelineRetrainingStale", [])],
        ),
        _case(
            "champion's f1_macro 0.7 under a floor of 0.8: fires; its accuracy (no floor) does not",
            [_series(pm.CHAMPION_METRIC, "0.7x10", metric="f1_macro", **champion),
             _series(pm.CHAMPION_METRIC, "0.5x10", metric="accuracy", **champion),
             _series(pm.QUALITY_FLOOR, "0.8x10", **floor)],
            [("5m", "MlopsPipelineModelBelowQualityFloor",
              [expect.alert("MlopsPipelineModelBelowQualityFloor", {**champion, "metric": "f1_macro"})])],
        ),
        _case(
            "champion's f1_macro 0.9 over the floor, log_loss 0.2 under its ceiling of 0.5: no alert",
            [_series(pm.CHAMPION_METRIC, "0.9x10", metric="f1_macro", **champion),
             _series(pm.CHAMPION_METRIC, "0.2x10", metric="log_loss", **champion),
             _series(pm.QUALITY_FLOOR, "0.8x10", **floor),
             _series(pm.QUALITY_FLOOR, "0.5x10", **_pipeline("selected_model", metric="log_loss", direction="max"))],
            [("5m", "MlopsPipelineModelBelowQualityFloor", [])],
        ),
        _case(
            "log_loss 0.7 over its ceiling of 0.5: fires",
            [_series(pm.CHAMPION_METRIC, "0.7x10", metric="log_loss", **champion),
             _series(pm.QUALITY_FLOOR, "0.5x10", **_pipeline("selected_model", metric="log_loss", direction="max"))],
            [("5m", "MlopsPipelineModelBelowQualityFloor",
              [expect.alert("MlopsPipelineModelBelowQualityFloor", {**champion, "metric": "log_loss"})])],
        ),
        _case(
            "a rollback at 10m: fires at once, for an hour",
            [_series(pm.LAST_ROLLBACK, "0x9 600x120", **deployed)],
            [("5m", "MlopsPipelineRollback", []),
             ("20m", "MlopsPipelineRollback", [expect.alert("MlopsPipelineRollback", deployed)]),
             ("80m", "MlopsPipelineRollback", [])],
        ),
        _case(
            "no rollback ever (0): no alert",
            [_series(pm.LAST_ROLLBACK, "0x120", **deployed)],
            [("30m", "MlopsPipelineRollback", [])],
        ),
        _case(
            "dataset failed at 5m after a success at 1m: fires until it succeeds again at 10m",
            [_series(pm.LAST_SUCCESS, "60x9 600x10", **dataset), _series(pm.LAST_FAILURE, "0x4 300x15", **dataset)],
            [("3m", "MlopsPipelineAssetFailing", []),
             ("7m", "MlopsPipelineAssetFailing", [expect.alert("MlopsPipelineAssetFailing", dataset)]),
             ("15m", "MlopsPipelineAssetFailing", [])],
        ),
    ]


def rule_tests(profile: TrainingProfile, rule_files: list[str], settings: AlertSettings = AlertSettings()) -> dict:
    """The promtool test document; `rule_files` are paths relative to the test file."""
    expect = _Expect(rule_groups(profile, settings))
    return {
        "rule_files": rule_files,
        "evaluation_interval": "1m",
        "tests": [
            *target_cases(expect, settings),
            *burn_rate_cases(expect),
            *latency_cases(expect, settings),
            *no_predictions_cases(expect, settings),
            *replica_cases(expect),
            *drift_cases(expect, profile),
            *pipeline_cases(expect),
        ],
    }


def tested_alerts(document: dict) -> dict[str, set[str]]:
    """alert name -> {"firing", "not firing"}: which outcomes the tests cover."""
    covered: dict[str, set[str]] = {}
    for test in document["tests"]:
        for check in test["alert_rule_test"]:
            covered.setdefault(check["alertname"], set()).add("firing" if check["exp_alerts"] else "not firing")
    return covered
