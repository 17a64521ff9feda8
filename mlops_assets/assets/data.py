"""The `dataset` asset: the training table, its schema and a seeded stratified split."""


import dagster as dg
from pydantic import Field

from mlops_assets.freshness import rebuild_condition
from mlops_assets.metadata import markdown_table
from mlops_assets.ml import data as ml_data
from mlops_assets.resources.data_source import DataSource
from mlops_assets.versioning import code_version_of


class DatasetConfig(dg.Config):
    source: str | None = Field(
        default=None,
        description="CSV or Parquet path, or 'palmerpenguins' for the dataset bundled with that package; "
        "default: the data_source resource's location (MLOPS_DATASET, else palmerpenguins).",
    )
    target_column: str | None = Field(default=None, description="default: the data_source resource's (MLOPS_TARGET_COLUMN, else species).")
    seed: int = 42
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    min_rows: int = 50
    min_rows_per_class: int = 10


@dg.observable_source_asset(
    group_name="ml",
    description="The raw file behind `dataset` (MLOPS_DATASET, default: palmerpenguins' CSV); "
    "observed by hashing its bytes, so a new file makes `dataset` stale.",
)
def dataset_source(data_source: DataSource) -> dg.DataVersion:
    try:
        return dg.DataVersion(data_source.fingerprint())
    except ml_data.DatasetError as exc:
        raise dg.Failure(description=str(exc)) from None


@dg.asset(
    deps=[dataset_source],
    automation_condition=rebuild_condition(),
    code_version=code_version_of(ml_data),
    kinds={"polars"},
    group_name="ml",
    description="Training table loaded with polars, normalised and split train/validation/test.",
)
def dataset(context: dg.AssetExecutionContext, config: DatasetConfig, data_source: DataSource) -> dg.Output[ml_data.Dataset]:
    # Every model, image and deployment downstream starts here; its data version is the
    # content hash, so an unchanged file leaves everything downstream fresh.
    source = config.source or data_source.location
    try:
        split = ml_data.SplitSpec(config.seed, config.validation_fraction, config.test_fraction)
        data = ml_data.build_dataset(
            source, config.target_column or data_source.target_column, split, config.min_rows, config.min_rows_per_class
        )
    except ml_data.DatasetError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"loaded {data.table.height} rows from {source}; stratified split: {data.stratified}")
    return dg.Output(
        data,
        data_version=dg.DataVersion(data.content_hash),
        metadata={
            "source": source,
            "target": data.target,
            "rows": data.table.height,
            "train/validation/test rows": f"{data.train.height}/{data.validation.height}/{data.test.height}",
            "stratified": data.stratified,
            "numeric_features": ", ".join(data.numeric_features),
            "categorical_features": ", ".join(data.categorical_features),
            "missing values": int(sum(data.table.null_count().row(0))),
            "class counts": dg.MetadataValue.json(data.class_counts()),
            "content_hash": data.content_hash,
            "preview": dg.MetadataValue.md(markdown_table(data.table.columns, data.table.head(5).iter_rows())),
        },
    )
