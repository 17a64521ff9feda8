"""Prometheus recording and alert rules, in the kubernetes-mixin style: each alert has a
readable `expr`, a `for`, `labels.severity`, and `annotations.summary` / `description`.

- Availability SLO: the share of requests answered with a 5xx, from Ray Serve's ingress
  counter (it also counts errors raised before the app's code runs). Multi-window
  multi-burn-rate alerts (Google SRE workbook, as kubernetes-mixin's KubeAPIErrorBudgetBurn):
  fast = 14.4x the budget over 1h and 5m, slow = 6x over 6h and 30m.
- Latency SLO: p99 of POST /predict measured by the app.
- The training reference (class shares, feature means and standard deviations) is rendered
  from the `dataset` asset into `mlops_model:*` recording rules: Prometheus itself holds what
  the served predictions and inputs are compared with.
- The pipeline itself (pipeline_metrics.py, pushed to the Pushgateway): a retraining older than
  twice the schedule's period, the champion below its quality floor, a rollback in the last
  hour, an asset whose last materialization failed. The thresholds are pushed with the metrics
  (the schedule's period by `candidate_models`, the floor by `selected_model`), so the rules
  follow MLOPS_RETRAIN_CRON and the run config without a re-render.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlops_assets.serving import APP_NAME, DEPLOYMENT_NAME

from . import API_JOB
from . import pipeline_metrics as pm
from .profile import TrainingProfile

API = f'job="{API_JOB}"'
APP = f'{API}, application="{APP_NAME}"'
BURN_WINDOWS = ("5m", "30m", "1h", "6h")
DRIFT_TVD_THRESHOLD = 0.25
DRIFT_MIN_PREDICTIONS = 100
FEATURE_SHIFT_Z_THRESHOLD = 2.0


@dataclass(frozen=True)
class AlertSettings:
    """The objectives the alerts enforce (docs/architecture.md, Monitoring)."""

    availability_slo: float = 0.995  # share of requests not answered with a 5xx
    latency_p99_slo_s: float = 0.25  # POST /predict, measured by the app
    no_predictions_for: str = "30m"
    # How long the API's metrics endpoint must fail before MlopsApiTargetDown fires (a test
    # shortens it through MLOPS_ALERT_TIMINGS target_down_for=...).
    target_down_for: str = "2m"


# -- recording rules ---------------------------------------------------------------------------
def error_ratio_rules() -> list[dict]:
    return [
        {
            "record": f"mlops_api:request_errors:ratio_rate{window}",
            # `or vector(0)`: with traffic and no 5xx the ratio is 0, not absent.
            "expr": f'(sum(rate(ray_serve_num_http_requests_total{{{APP}, status_code=~"5.."}}[{window}])) or vector(0))\n'
            f"/\nsum(rate(ray_serve_num_http_requests_total{{{APP}}}[{window}]))",
        }
        for window in BURN_WINDOWS
    ]


def training_reference_rules(profile: TrainingProfile) -> list[dict]:
    rules = [
        {"record": "mlops_model:training_class_ratio", "expr": f"vector({ratio:.6g})", "labels": {"predicted_class": label}}
        for label, ratio in profile.class_ratios.items()
    ]
    for feature in sorted(profile.feature_means):
        rules.append({"record": "mlops_model:training_feature_mean", "expr": f"vector({profile.feature_means[feature]:.6g})", "labels": {"feature": feature}})
        rules.append({"record": "mlops_model:training_feature_stddev", "expr": f"vector({profile.feature_stddevs[feature]:.6g})", "labels": {"feature": feature}})
    return rules


def served_distribution_rules() -> list[dict]:
    return [
        {
            "record": "mlops_api:prediction_class_ratio:rate1h",
            "expr": f"sum by (predicted_class) (rate(ray_mlops_api_predictions_total{{{API}}}[1h]))\n"
            f"/ on() group_left\nsum(rate(ray_mlops_api_predictions_total{{{API}}}[1h]))",
        },
        {
            # Total variation distance: half the summed absolute share differences; a class
            # missing on one side counts as share 0 there.
            "record": "mlops_api:prediction_class_drift:tvd1h",
            "expr": "0.5 * sum(abs(\n"
            "    (mlops_api:prediction_class_ratio:rate1h or on(predicted_class) (0 * mlops_model:training_class_ratio))\n"
            "  - on(predicted_class)\n"
            "    (mlops_model:training_class_ratio or on(predicted_class) (0 * mlops_api:prediction_class_ratio:rate1h))\n"
            "))",
        },
        {
            "record": "mlops_api:predictions:increase1h",
            "expr": f"sum(increase(ray_mlops_api_predictions_total{{{API}}}[1h]))",
        },
        {
            "record": "mlops_api:feature_mean:rate1h",
            "expr": f"sum by (feature) (rate(ray_mlops_api_feature_value_sum{{{API}}}[1h]))\n"
            f"/\nsum by (feature) (rate(ray_mlops_api_feature_value_count{{{API}}}[1h]))",
        },
        {
            "record": "mlops_api:feature_mean_shift:zscore1h",
            "expr": "(mlops_api:feature_mean:rate1h - on(feature) mlops_model:training_feature_mean)\n"
            "/ on(feature) mlops_model:training_feature_stddev",
        },
    ]


# -- alerts ------------------------------------------------------------------------------------
def target_down(settings: AlertSettings) -> dict:
    return {
        "alert": "MlopsApiTargetDown",
        "expr": f"up{{{API}}} == 0",
        "for": settings.target_down_for,
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "The prediction API's metrics endpoint cannot be scraped.",
            "description": f"Prometheus has failed to scrape {{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) for {settings.target_down_for}: "
            "the API host or its Ray instance is down, or the metrics port is blocked.",
        },
    }


def target_absent() -> dict:
    return {
        "alert": "MlopsApiTargetAbsent",
        "expr": f"absent(up{{{API}}})",
        "for": "5m",
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "No prediction API target is up.",
            "description": f"Prometheus has had no target of job {API_JOB} for 5 minutes: "
            "the API hosts disappeared from the scrape configuration.",
        },
    }


def error_budget_burn(settings: AlertSettings) -> list[dict]:
    budget = 1 - settings.availability_slo
    pairs = [("fast", "1h", "5m", 14.4, "2m", "critical"), ("slow", "6h", "30m", 6, "15m", "warning")]
    return [
        {
            "alert": "MlopsApiErrorBudgetBurn",
            "expr": f"mlops_api:request_errors:ratio_rate{long} > ({factor} * {budget:.6g})\n"
            f"and\nmlops_api:request_errors:ratio_rate{short} > ({factor} * {budget:.6g})",
            "for": wait,
            "labels": {"severity": severity, "long": long, "short": short},
            "annotations": {
                "summary": "The prediction API is burning its error budget too fast.",
                "description": f"More than {factor * budget:.2%} of requests failed with a 5xx over both the last {long} "
                f"and the last {short} ({speed} burn: {factor}x the rate that spends the whole "
                f"{settings.availability_slo:.1%} availability budget).",
            },
        }
        for speed, long, short, factor, wait, severity in pairs
    ]


def latency_p99_high(settings: AlertSettings) -> dict:
    return {
        "alert": "MlopsApiLatencyP99High",
        "expr": "histogram_quantile(0.99,\n"
        f'  sum by (le) (rate(ray_mlops_api_request_latency_seconds_bucket{{{API}, route="/predict"}}[5m]))\n'
        f") > {settings.latency_p99_slo_s:g}",
        "for": "10m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "POST /predict is slower than its latency objective.",
            "description": f"The 99th percentile of POST /predict latency has been above {settings.latency_p99_slo_s:g}s "
            "for 10 minutes: add replicas, or look for a slower model version or bigger requests.",
        },
    }


def no_predictions(settings: AlertSettings) -> dict:
    window = settings.no_predictions_for
    return {
        "alert": "MlopsApiNoPredictions",
        # `or vector(0)`: a counter that was never incremented does not exist yet.
        "expr": f"(sum(increase(ray_mlops_api_predictions_total{{{API}}}[{window}])) or vector(0)) == 0\n"
        f"and on()\nsum(up{{{API}}}) > 0",
        "for": "5m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "The prediction API has served no predictions for a while.",
            "description": f"The API is up but predicted no row in the last {window}: its clients may be failing "
            "to reach it, or sending only requests it rejects.",
        },
    }


def no_replicas() -> dict:
    # ray_serve_deployment_replica_healthy is not exported by Ray 2.60 here (see
    # api_dashboard.REPLICAS): a replica that runs reports its processing-queries gauge.
    return {
        "alert": "MlopsApiNoReplicas",
        "expr": f'(count(last_over_time(ray_serve_replica_processing_queries{{{APP}, deployment="{DEPLOYMENT_NAME}"}}[1m])) or vector(0)) < 1\n'
        f"and on()\nsum(up{{{API}}}) > 0",
        "for": "2m",
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "The prediction deployment has no running replica.",
            "description": f"Ray answers on the metrics port but no replica of {DEPLOYMENT_NAME} has reported for 2 minutes: "
            "every request fails. See the replica logs in the Ray instance's session folder.",
        },
    }


def drift_condition() -> str:
    """Served class shares too far from training, over enough predictions: the expression of
    the drift alert and of the drift sensor (automation.py), so both decide alike."""
    return (f"mlops_api:prediction_class_drift:tvd1h > {DRIFT_TVD_THRESHOLD:g}\n"
            f"and on()\nmlops_api:predictions:increase1h >= {DRIFT_MIN_PREDICTIONS}")


def prediction_drift() -> dict:
    return {
        "alert": "MlopsModelPredictionDrift",
        "expr": drift_condition(),
        "for": "15m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "The classes the model predicts no longer match the training distribution.",
            "description": f"Over the last hour the predicted class shares are more than {DRIFT_TVD_THRESHOLD:g} "
            "(total variation distance) away from the training split's: the inputs may have drifted. "
            "Compare the Model dashboard's class shares and input panels, and consider retraining.",
        },
    }


# -- the pipeline (pushed metrics) ---------------------------------------------------------------
PIPE = f'job="{pm.JOB}"'
ROLLBACK_WINDOW_S = 3600


def retraining_stale() -> dict:
    training = f'{PIPE}, asset="candidate_models"'
    return {
        "alert": "MlopsPipelineRetrainingStale",
        # Both series are in candidate_models' group: the same labels, so they match one to one.
        "expr": f"time() - {pm.LAST_SUCCESS}{{{training}}}\n> 2 * {pm.RETRAINING_PERIOD}{{{training}}}",
        "for": "10m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "The model has not been retrained for more than twice the schedule's period.",
            "description": "candidate_models last materialized in the {{ $labels.target }} target more than twice "
            "the retraining schedule's period ago (MLOPS_RETRAIN_CRON): the schedule is off, its runs fail, or "
            "the data has not changed since (the schedule materializes stale assets only).",
        },
    }


def below_quality_floor() -> dict:
    champion = f"{pm.CHAMPION_METRIC}{{{PIPE}}}"
    return {
        "alert": "MlopsPipelineModelBelowQualityFloor",
        "expr": f'{champion} < on(job, target, metric) group_left {pm.QUALITY_FLOOR}{{{PIPE}, direction="min"}}\n'
        f'or\n{champion} > on(job, target, metric) group_left {pm.QUALITY_FLOOR}{{{PIPE}, direction="max"}}',
        "for": "1m",
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "The model in service is below the quality floor.",
            "description": "Version {{ $labels.model_version }} of {{ $labels.model_name }} scores below the quality "
            "floor on {{ $labels.metric }} (test split) in the {{ $labels.target }} target: the floor was raised "
            "or the test data changed. Retrain, or roll back to a better version.",
        },
    }


def rollback_recent() -> dict:
    last = f"{pm.LAST_ROLLBACK}{{{PIPE}}}"
    return {
        "alert": "MlopsPipelineRollback",
        # 0 means never: the first clause keeps it out.
        "expr": f"{last} > 0\nand\ntime() - {last} < {ROLLBACK_WINDOW_S}",
        "for": "0m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "A deployment was rolled back in the last hour.",
            "description": "deployed_api rolled a new model version back in the {{ $labels.target }} target within "
            "the last hour: the previous version serves. The failed step's log and metadata say why.",
        },
    }


def asset_failing() -> dict:
    return {
        "alert": "MlopsPipelineAssetFailing",
        "expr": f"{pm.LAST_FAILURE}{{{PIPE}}}\n> {pm.LAST_SUCCESS}{{{PIPE}}}",
        "for": "0m",
        "labels": {"severity": "warning"},
        "annotations": {
            "summary": "An asset of the pipeline failed its last materialization.",
            "description": "{{ $labels.asset }} failed in the {{ $labels.target }} target after its last success: "
            "what depends on it is not updated. See the failed run in Dagster.",
        },
    }


def pipeline_alerts() -> list[dict]:
    return [retraining_stale(), below_quality_floor(), rollback_recent(), asset_failing()]


def rule_groups(profile: TrainingProfile, settings: AlertSettings = AlertSettings()) -> dict[str, dict]:
    """rule file name -> its content (Prometheus' `groups:` document)."""
    api = {
        "groups": [
            {"name": "mlops-api.rules", "rules": error_ratio_rules()},
            {
                "name": "mlops-api.alerts",
                "rules": [
                    target_down(settings),
                    target_absent(),
                    *error_budget_burn(settings),
                    latency_p99_high(settings),
                    no_predictions(settings),
                    no_replicas(),
                ],
            },
        ]
    }
    model = {
        "groups": [
            # One group: rules of a group are evaluated in order, so the served shares see the
            # training reference of the same evaluation.
            {"name": "mlops-model.rules", "rules": [*training_reference_rules(profile), *served_distribution_rules()]},
            {"name": "mlops-model.alerts", "rules": [prediction_drift()]},
        ]
    }
    pipeline = {"groups": [{"name": "mlops-pipeline.alerts", "rules": pipeline_alerts()}]}
    return {"mlops-api.rules.yml": api, "mlops-model.rules.yml": model, "mlops-pipeline.rules.yml": pipeline}


def alert_names(groups: dict[str, dict]) -> set[str]:
    return {r["alert"] for doc in groups.values() for g in doc["groups"] for r in g["rules"] if "alert" in r}


def rule_count(groups: dict[str, dict]) -> int:
    return sum(len(g["rules"]) for doc in groups.values() for g in doc["groups"])
