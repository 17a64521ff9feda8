"""The pipeline dashboard: how fresh each asset is, the champion's quality by version over
time, the candidates side by side, training and deploy durations, rollbacks, and the data and
image the pipeline produced. One function per panel.

Every series comes from the Pushgateway (pipeline_metrics.py: each materialization pushes,
grouped by asset and target; Prometheus keeps the pushed `job` label with honor_labels)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge as bargauge_builders
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.models import common, units

from . import pipeline_metrics as pm
from .panels import DATASOURCE, dashboard, query, row, stat, timeseries, with_queries

UID = "mlops-pipeline"
PIPE = f'job="{pm.JOB}"'


def time_since_success():
    return stat(
        "Time since last success",
        "Per asset, how long ago it last materialized (freshness). The live-service assets "
        "(container_image, deployed_api, dashboards) materialize on every `make run`.",
        units.Seconds,
        [query(f"time() - max by (asset) ({pm.LAST_SUCCESS}{{{PIPE}}} > 0)", "{{asset}}")],
        span=24,
    )


def assets_failing():
    return stat(
        "Assets failing",
        "Assets whose last materialization failed (last failure after last success); the "
        "MlopsPipelineAssetFailing alert fires on the same condition.",
        units.Short,
        [query(f"sum({pm.LAST_FAILURE}{{{PIPE}}} > bool {pm.LAST_SUCCESS}{{{PIPE}}})", "failing")],
        span=6,
    )


def champion_version():
    return stat(
        "Champion and served version",
        "The registry version of the champion (selected_model) and the version deployed_api serves.",
        units.Short,
        [query(f"max by (model_name) ({pm.CHAMPION_VERSION}{{{PIPE}}})", "champion {{model_name}}"),
         query(f"max({pm.DEPLOYED_VERSION}{{{PIPE}}})", "served")],
        span=6,
    )


def rollbacks_total():
    return stat(
        "Rollbacks",
        "Deployments rolled back since the gateway's persistence began (a counter carried across pushes).",
        units.Short,
        [query(f"sum({pm.ROLLBACKS_TOTAL}{{{PIPE}}})", "rollbacks")],
        span=6,
    )


def dataset_rows():
    return stat(
        "Dataset rows",
        "Rows of the table the last `dataset` materialization loaded, and its data version.",
        units.Short,
        [query(f"max by (data_version) ({pm.DATASET_ROWS}{{{PIPE}}} * on(job, target) group_left(data_version) "
               f"{pm.DATASET_INFO}{{{PIPE}}})", "rows ({{data_version}})")],
        span=6,
    )


def champion_quality_by_version():
    return timeseries(
        "Champion test metrics by version",
        "Each champion's metrics on the test split, one line per version and metric, with the "
        "quality floor of the selection metric (a ceiling for log_loss).",
        units.Short,
        [query(f"max by (model_version, metric) ({pm.CHAMPION_METRIC}{{{PIPE}}})", "v{{model_version}} {{metric}}"),
         query(f"max by (metric, direction) ({pm.QUALITY_FLOOR}{{{PIPE}}})", "floor {{metric}} ({{direction}})")],
    )


def candidate_comparison():
    panel = (
        bargauge_builders.Panel()
        .title("Candidates (validation)")
        .description("The last training's candidates side by side: each family's validation metrics.")
        .datasource(DATASOURCE)
        .unit(units.Short)
        .span(12)
        .height(8)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return with_queries(panel, [query(f"max by (family, metric) ({pm.CANDIDATE_METRIC}{{{PIPE}}})", "{{family}} {{metric}}")])


def training_durations():
    return timeseries(
        "Training duration",
        "Seconds of the last successful candidate_models (training, or reuse of an identical one) "
        "and selected_model (test scoring, registration, promotion).",
        units.Seconds,
        [query(f'max by (asset) ({pm.DURATION}{{{PIPE}, asset=~"candidate_models|selected_model"}})', "{{asset}}")],
    )


def deploy_duration():
    return timeseries(
        "Deploy duration",
        "Seconds of the last successful deployed_api (a rollout with its readiness and smoke checks, "
        "or the check alone when the API already served the champion).",
        units.Seconds,
        [query(f"max({pm.DEPLOY_DURATION}{{{PIPE}}})", "deployed_api")],
    )


def rollbacks_over_time():
    return timeseries(
        "Rollbacks over time",
        "The rollback counter; MlopsPipelineRollback fires for an hour after each rollback.",
        units.Short,
        [query(f"sum({pm.ROLLBACKS_TOTAL}{{{PIPE}}})", "rollbacks")],
    )


def class_shares():
    return timeseries(
        "Dataset class shares",
        "Share of each class in the table the pipeline trained on.",
        units.PercentUnit,
        [query(f"max by (class) ({pm.CLASS_SHARE}{{{PIPE}}})", "{{class}}")],
        stacked=True,
    )


def image_size():
    return stat(
        "API image size",
        "Size of the API image with the champion baked in (none when no container engine answered).",
        units.BytesSI,
        [query(f"max({pm.IMAGE_SIZE}{{{PIPE}}})", "image")],
        span=12,
    )


def build():
    return (
        dashboard(UID, "mlops-assets / Pipeline", "The pipeline watched by its own pushed metrics: freshness, "
                  "model quality by version, candidates, durations, rollbacks.")
        .with_row(row("Freshness"))
        .with_panel(time_since_success())
        .with_panel(assets_failing())
        .with_panel(champion_version())
        .with_panel(rollbacks_total())
        .with_panel(dataset_rows())
        .with_row(row("Model quality"))
        .with_panel(champion_quality_by_version())
        .with_panel(candidate_comparison())
        .with_row(row("Durations and rollbacks"))
        .with_panel(training_durations())
        .with_panel(deploy_duration())
        .with_panel(rollbacks_over_time())
        .with_row(row("Data and image"))
        .with_panel(class_shares())
        .with_panel(image_size())
    )
