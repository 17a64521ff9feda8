"""The model dashboard: what the served model predicts, which version serves, and whether the
inputs and outputs still look like the training data. One function per panel.

The training reference (class shares, feature means and standard deviations) comes from the
recording rules rendered from the `dataset` asset (rules.py, `mlops_model:*`)."""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from .panels import API, RATE, dashboard, query, row, stat, timeseries
from .rules import DRIFT_TVD_THRESHOLD, FEATURE_SHIFT_Z_THRESHOLD

UID = "mlops-model"


def model_version_in_service():
    return stat(
        "Model version in service",
        "The model name and version the replicas serve, and the engine that runs it: onnx (ONNX Runtime) or "
        "sklearn, with why not ONNX (ray_mlops_api_model_info == 1; the replicas refresh it at each health check, "
        "`last_over_time` bridges the refreshes).",
        units.Short,
        [
            query(
                "max by (model_name, model_version, engine, engine_reason) "
                f"(last_over_time(ray_mlops_api_model_info{{{API}}}[1m])) == 1",
                "{{model_name}} v{{model_version}} ({{engine}}) {{engine_reason}}",
            )
        ],
        span=12,
    )


def prediction_rate():
    return stat(
        "Predictions per second",
        "Rows predicted per second, all classes.",
        units.Short,
        [query(f"sum(rate(ray_mlops_api_predictions_total{{{API}}}[{RATE}]))", "rows/s")],
        span=6,
    )


def prediction_drift_stat():
    return stat(
        "Prediction drift (1h)",
        "Total variation distance between the classes predicted over the last hour and the training "
        f"class distribution (0 = same, 1 = disjoint); the drift alert fires above {DRIFT_TVD_THRESHOLD}.",
        units.Short,
        [query("mlops_api:prediction_class_drift:tvd1h", "distance")],
        span=6,
    )


def predictions_by_class():
    return timeseries(
        "Predictions by class",
        "Rows predicted per second, by predicted class.",
        units.Short,
        [query(f"sum by (predicted_class) (rate(ray_mlops_api_predictions_total{{{API}}}[{RATE}]))", "{{predicted_class}}")],
        stacked=True,
    )


def predictions_by_version():
    return timeseries(
        "Predictions by model version",
        "Rows predicted per second by each model version: a champion switch shows as a hand-over.",
        units.Short,
        [query(f"sum by (model_version) (rate(ray_mlops_api_predictions_total{{{API}}}[{RATE}]))", "v{{model_version}}")],
    )


def class_share_vs_training():
    return timeseries(
        "Class share: served (1h) vs training",
        "Share of each class among the predictions of the last hour, beside its share in the training split.",
        units.PercentUnit,
        [
            query("mlops_api:prediction_class_ratio:rate1h", "served {{predicted_class}}"),
            query("mlops_model:training_class_ratio", "training {{predicted_class}}"),
        ],
    )


def prediction_drift():
    return timeseries(
        "Prediction drift from training (1h)",
        "Total variation distance between served and training class distributions.",
        units.Short,
        [query("mlops_api:prediction_class_drift:tvd1h", "distance")],
    )


def feature_mean_shift():
    return timeseries(
        "Input drift: feature mean shift (1h, in training standard deviations)",
        "(mean of the values received over the last hour - training mean) / training standard deviation, "
        f"per numeric feature; beyond ±{FEATURE_SHIFT_Z_THRESHOLD} the inputs no longer look like the training data. "
        "Both sides are binned through the API's histogram buckets (Ray exports bucket midpoints, not exact sums).",
        units.Short,
        [query("mlops_api:feature_mean_shift:zscore1h", "{{feature}}")],
    )


def feature_means():
    return timeseries(
        "Feature means received",
        "Mean value received per numeric feature (histogram _sum / _count; approximate: Ray's metrics agent "
        "rebuilds the sum from bucket midpoints).",
        units.Short,
        [
            query(
                f"sum by (feature) (rate(ray_mlops_api_feature_value_sum{{{API}}}[{RATE}]))"
                f" / sum by (feature) (rate(ray_mlops_api_feature_value_count{{{API}}}[{RATE}]))",
                "{{feature}}",
            )
        ],
    )


def feature_median():
    return timeseries(
        "Feature medians received",
        "Median of the values received per numeric feature (from the histogram's buckets: coarse, 1-2-5 steps).",
        units.Short,
        [
            query(
                f"histogram_quantile(0.5, sum by (feature, le) (rate(ray_mlops_api_feature_value_bucket{{{API}}}[{RATE}])))",
                "{{feature}}",
            )
        ],
    )


def missing_values_ratio():
    return timeseries(
        "Missing values per row",
        "Share of rows received with a missing (null) value, per feature.",
        units.PercentUnit,
        [
            query(
                f"sum by (feature) (rate(ray_mlops_api_feature_missing_total{{{API}}}[{RATE}]))"
                f" / on() group_left sum(rate(ray_mlops_api_predictions_total{{{API}}}[{RATE}]))",
                "{{feature}}",
            )
        ],
    )


def category_share():
    return timeseries(
        "Categorical inputs: share of each category",
        "Share of each category among the values received, per categorical feature.",
        units.PercentUnit,
        [
            query(
                f"sum by (feature, category) (rate(ray_mlops_api_feature_category_total{{{API}}}[{RATE}]))"
                f" / on(feature) group_left sum by (feature) (rate(ray_mlops_api_feature_category_total{{{API}}}[{RATE}]))",
                "{{feature}}={{category}}",
            )
        ],
    )


def batch_rows():
    return timeseries(
        "Rows per model call (p50 / p99)",
        "Rows per model call after request batching.",
        units.Short,
        [
            query(f"histogram_quantile(0.5, sum by (le) (rate(ray_mlops_api_batch_rows_bucket{{{API}}}[{RATE}])))", "p50"),
            query(f"histogram_quantile(0.99, sum by (le) (rate(ray_mlops_api_batch_rows_bucket{{{API}}}[{RATE}])))", "p99"),
        ],
    )


def build():
    return (
        dashboard(UID, "mlops-assets / Model", "What the served model predicts, which version serves it, and drift from the training data.")
        .with_row(row("Model in service"))
        .with_panel(model_version_in_service())
        .with_panel(prediction_rate())
        .with_panel(prediction_drift_stat())
        .with_row(row("Predictions"))
        .with_panel(predictions_by_class())
        .with_panel(predictions_by_version())
        .with_panel(class_share_vs_training())
        .with_panel(prediction_drift())
        .with_row(row("Inputs"))
        .with_panel(feature_mean_shift())
        .with_panel(feature_means())
        .with_panel(feature_median())
        .with_panel(missing_values_ratio())
        .with_panel(category_share())
        .with_panel(batch_rows())
    )
