"""Schedules, sensors and automation conditions: how the pipeline keeps itself current.

All are visible in `dagster dev` (Automation tab) and start switched off; docs/operations.md, Automation
says how to turn them on. Runs they request go through the same in-asset short-circuits as
`make run`: unchanged inputs train, build and deploy nothing.
"""

import json
import time

import dagster as dg

from mlops_assets.freshness import DATA_VERSION_TAG
from mlops_assets.ml import data as ml_data
from mlops_assets.monitoring import rules as monitoring_rules
from mlops_assets.resources.prometheus_api import PrometheusApi, PrometheusQueryError
from mlops_assets.settings import Settings

RETRAIN_JOB = "materialize_all"
SOURCE_KEY = dg.AssetKey("dataset_source")

# The drift measure is computed once, by Prometheus's recording rules (monitoring/rules.py,
# rendered by the `dashboards` asset: the training reference and the served shares over 1h);
# the sensor reads them and decides with the drift alert's own expression and threshold.
DRIFT_TVD = "mlops_api:prediction_class_drift:tvd1h"
SERVED_PREDICTIONS = "mlops_api:predictions:increase1h"
# Feature mean shift in training standard deviations (Ray's histogram _sum is rebuilt from
# bucket midpoints, so the rule compares with a training reference binned the same way):
# reported, not a trigger.
FEATURE_SHIFTS = "max by (feature) (mlops_api:feature_mean_shift:zscore1h)"


def build_automation(settings: Settings) -> tuple[list, list]:
    """(schedules, sensors) for these settings."""

    @dg.schedule(
        name="retraining_schedule",
        cron_schedule=settings.retrain_cron,
        job_name=RETRAIN_JOB,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Materialize the stale assets of the graph (cron {settings.retrain_cron!r}, MLOPS_RETRAIN_CRON).",
    )
    def retraining_schedule(context: dg.ScheduleEvaluationContext):
        return dg.RunRequest(stale_assets_only=True, tags={"mlops/trigger": "schedule"})

    @dg.sensor(
        name="new_data_sensor",
        job_name=RETRAIN_JOB,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Retrain when the bytes behind MLOPS_DATASET change (cursor: their hash).",
    )
    def new_data_sensor(context: dg.SensorEvaluationContext):
        source = settings.dataset or ml_data.DEFAULT_SOURCE
        target = settings.target_column or ml_data.DEFAULT_TARGET
        try:
            fingerprint = ml_data.source_fingerprint(source, target)
        except ml_data.DatasetError as exc:
            return dg.SkipReason(str(exc))
        if fingerprint == context.cursor:
            return dg.SkipReason(f"no new data in {source} (hash {fingerprint})")
        observation = dg.AssetObservation(asset_key=SOURCE_KEY, tags={DATA_VERSION_TAG: fingerprint})
        if context.cursor is None and last_observed(context.instance) == fingerprint:
            # First tick on data the pipeline already saw: remember it, request nothing.
            return dg.SensorResult(cursor=fingerprint, skip_reason=dg.SkipReason("data already seen"))
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"data-{fingerprint}", tags={"mlops/trigger": "new_data", "mlops/data_hash": fingerprint})],
            asset_events=[observation],
            cursor=fingerprint,
        )

    @dg.sensor(
        name="drift_sensor",
        job_name=RETRAIN_JOB,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={"prometheus_api"},
        description=(
            "Retrain when the drift alert's condition holds in Prometheus (predicted class shares over 1h at a total "
            f"variation > {monitoring_rules.DRIFT_TVD_THRESHOLD:g} from training, at least "
            f"{monitoring_rules.DRIFT_MIN_PREDICTIONS} predictions); cooldown {settings.drift_cooldown_minutes} min."
        ),
    )
    def drift_sensor(context: dg.SensorEvaluationContext):
        return evaluate_drift(context, context.resources.prometheus_api, settings, now=time.time())

    # Evaluates every asset's automation condition (freshness.rebuild_condition, the same
    # conditions `make run`'s waves evaluate): off until switched on in the UI, so `dagster dev`
    # never starts deployments by surprise. The condition is Python code of this project, so
    # the sensor evaluates it in the code location (use_user_code_server).
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "automation_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=60,
        use_user_code_server=True,
        description="Materializes the assets that are stale or missing, upstream first (see freshness.py).",
    )
    return [retraining_schedule], [new_data_sensor, drift_sensor, automation_sensor]


def evaluate_drift(context, prometheus: PrometheusApi, settings: Settings, now: float):
    state = json.loads(context.cursor) if context.cursor else {}
    minimum = monitoring_rules.DRIFT_MIN_PREDICTIONS
    try:
        served = sum(value for _, value in prometheus.vector(SERVED_PREDICTIONS))
        tvd = [value for _, value in prometheus.vector(DRIFT_TVD)]
        drifted = bool(prometheus.vector(monitoring_rules.drift_condition()))
        shifts = {labels.get("feature", ""): value for labels, value in prometheus.vector(FEATURE_SHIFTS)}
    except PrometheusQueryError as exc:
        return dg.SkipReason(f"cannot read served distributions: {exc}")
    if served < minimum:
        return dg.SkipReason(f"only {served:.0f} predictions in the last hour (need {minimum})")
    if not tvd:
        return dg.SkipReason(f"Prometheus has no {DRIFT_TVD}: materialize `dashboards` (it loads the training reference)")
    distance = tvd[0]
    summary = f"prediction TVD {distance:.3f} (threshold {monitoring_rules.DRIFT_TVD_THRESHOLD:g})" + (
        f", largest feature mean shift {max(shifts.values()):.2f} sd ({max(shifts, key=shifts.get)})" if shifts else ""
    )
    if not drifted:
        return dg.SkipReason(f"no drift: {summary}")
    last = state.get("last_fired")
    if last is not None and now - last < settings.drift_cooldown_minutes * 60:
        return dg.SkipReason(f"drift ({summary}) but cooling down until {last + settings.drift_cooldown_minutes * 60:.0f}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"drift-{int(now)}", tags={"mlops/trigger": "drift", "mlops/drift_tvd": f"{distance:.4f}"})
        ],
        cursor=json.dumps({"last_fired": now, "tvd": distance}),
    )


def last_observed(instance: dg.DagsterInstance) -> str | None:
    """The data version of the latest observation of `dataset_source` (None: never observed)."""
    record = instance.get_latest_data_version_record(SOURCE_KEY, is_source=True)
    if record is None:
        return None
    return record.asset_observation.tags.get(DATA_VERSION_TAG) if record.asset_observation else None
