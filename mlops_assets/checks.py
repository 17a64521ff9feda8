"""Asset checks: data quality of `dataset` (blocking: bad data never trains a model).

The quality floor of `selected_model` is reported by that asset itself, because it is
decided together with the promotion (see assets/training.py)."""


import dagster as dg

from mlops_assets.ml import quality
from mlops_assets.ml.data import Dataset


def _result(outcome: quality.QualityResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={k: dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v for k, v in outcome.details.items()},
    )


@dg.asset_check(asset="dataset", blocking=True, description="The target column exists, has no missing label and at least two classes.")
def target_column_usable(dataset: Dataset) -> dg.AssetCheckResult:
    return _result(quality.target_column_usable(dataset.table, dataset.target))


@dg.asset_check(asset="dataset", blocking=True, description="No feature column is entirely null.")
def no_feature_entirely_null(dataset: Dataset) -> dg.AssetCheckResult:
    return _result(quality.no_feature_entirely_null(dataset.table, dataset.target))


@dg.asset_check(asset="dataset", blocking=True, description="Every class has at least `min_rows_per_class` rows.")
def enough_rows_per_class(dataset: Dataset) -> dg.AssetCheckResult:
    return _result(quality.enough_rows_per_class(dataset.table, dataset.target, dataset.min_rows_per_class))


@dg.asset_check(asset="dataset", blocking=True, description="The table has at least `min_rows` rows.")
def enough_rows(dataset: Dataset) -> dg.AssetCheckResult:
    return _result(quality.enough_rows(dataset.table, dataset.min_rows))


DATASET_CHECKS = [target_column_usable, no_feature_entirely_null, enough_rows_per_class, enough_rows]
