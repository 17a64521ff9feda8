"""Asset checks: data quality of `dataset` (blocking: bad data never trains a model).

The four rules run in one step (one load of the table, one process step); each reports as
its own check in the UI. The quality floor of `selected_model` is reported by that asset
itself, because it is decided together with the promotion (see assets/training.py)."""

from typing import Iterator

import dagster as dg

from mlops_assets.ml import quality
from mlops_assets.ml.data import Dataset

DATASET_CHECK_SPECS = [
    dg.AssetCheckSpec("target_column_usable", asset="dataset", blocking=True,
                      description="The target column exists, has no missing label and at least two classes."),
    dg.AssetCheckSpec("no_feature_entirely_null", asset="dataset", blocking=True,
                      description="No feature column is entirely null."),
    dg.AssetCheckSpec("enough_rows_per_class", asset="dataset", blocking=True,
                      description="Every class has at least `min_rows_per_class` rows (dataset config)."),
    dg.AssetCheckSpec("enough_rows", asset="dataset", blocking=True,
                      description="The table has at least `min_rows` rows (dataset config)."),
]


def _result(name: str, outcome: quality.QualityResult) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key="dataset",
        check_name=name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={k: dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v for k, v in outcome.details.items()},
    )


@dg.multi_asset_check(specs=DATASET_CHECK_SPECS, ins={"dataset": dg.AssetIn("dataset")})
def dataset_quality(dataset: Dataset) -> Iterator[dg.AssetCheckResult]:
    table, target = dataset.table, dataset.target
    yield _result("target_column_usable", quality.target_column_usable(table, target))
    yield _result("no_feature_entirely_null", quality.no_feature_entirely_null(table, target))
    yield _result("enough_rows_per_class", quality.enough_rows_per_class(table, target, dataset.min_rows_per_class))
    yield _result("enough_rows", quality.enough_rows(table, dataset.min_rows))


DATASET_CHECKS = [dataset_quality]
