"""Load a table with polars, describe its features, split it, and fingerprint it."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

DEFAULT_SOURCE = "palmerpenguins"
DEFAULT_TARGET = "species"

# Where a user changes the source or the target column; named in every error message.
SOURCE_SETTING = "the `source` config of the `dataset` asset (or MLOPS_DATASET for `make run`)"
TARGET_SETTING = "the `target_column` config of the `dataset` asset (or MLOPS_TARGET_COLUMN for `make run`)"


class DatasetError(ValueError):
    """The configured data source cannot be turned into a training table."""


@dataclass(frozen=True)
class SplitSpec:
    seed: int = 42
    validation_fraction: float = 0.2
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.validation_fraction < 1 and 0 < self.test_fraction < 1):
            raise DatasetError("validation_fraction and test_fraction must be between 0 and 1")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise DatasetError("validation_fraction + test_fraction must leave at least 10% for training")


@dataclass
class Dataset:
    """The `dataset` asset's value: the cleaned table, its schema and its split."""

    source: str
    target: str
    numeric_features: list[str]
    categorical_features: list[str]
    table: pl.DataFrame
    train: pl.DataFrame
    validation: pl.DataFrame
    test: pl.DataFrame
    content_hash: str
    stratified: bool
    split: SplitSpec = field(default_factory=SplitSpec)
    # Thresholds of the data-quality checks, chosen with the source in the asset's config.
    min_rows: int = 50
    min_rows_per_class: int = 10

    @property
    def features(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]

    def class_counts(self) -> dict[str, int]:
        counts = self.table.get_column(self.target).cast(pl.String).value_counts(sort=True)
        return {str(row[0]): int(row[1]) for row in counts.iter_rows()}

    def xy(self, part: str):
        """Features as a pandas frame (what scikit-learn and MLflow take) and labels as numpy."""
        frame = getattr(self, part)
        return frame.select(self.features).to_pandas(), frame.get_column(self.target).to_numpy()


def read_table(source: str) -> pl.DataFrame:
    """Read the configured source: the bundled default, or a CSV / Parquet path."""
    if source == DEFAULT_SOURCE:
        return _read_palmerpenguins()
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"data source {str(path)!r} does not exist; point {SOURCE_SETTING} at a CSV or Parquet file")
    if path.is_dir():
        raise DatasetError(f"data source {str(path)!r} is a folder, not a file; set {SOURCE_SETTING} to a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DatasetError(f"data source {str(path)!r} is empty (0 bytes); set {SOURCE_SETTING} to a file with data")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pl.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            frame = pl.read_csv(path, null_values=["", "NA", "NaN", "nan", "null"], infer_schema_length=10_000)
        else:
            raise DatasetError(
                f"data source {str(path)!r} has suffix {suffix!r}; only .csv and .parquet are read, set {SOURCE_SETTING}"
            )
    except DatasetError:
        raise
    except Exception as exc:  # polars raises many types for malformed files
        raise DatasetError(
            f"data source {str(path)!r} could not be read as {suffix.lstrip('.')}: {exc}; fix the file or {SOURCE_SETTING}"
        ) from exc
    if frame.height == 0 or frame.width == 0:
        raise DatasetError(f"data source {str(path)!r} has no rows; set {SOURCE_SETTING} to a file with data")
    return frame


def _palmerpenguins_bytes() -> bytes:
    # The palmerpenguins package ships its CSV; nothing is downloaded. Found without importing
    # the package, whose __init__ imports pandas (0.3-0.7 s of every no-change `make run`).
    from importlib.util import find_spec

    spec = find_spec(DEFAULT_SOURCE)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"the {DEFAULT_SOURCE} package is not installed; install it or set {SOURCE_SETTING} to a CSV or Parquet file")
    return (Path(next(iter(spec.submodule_search_locations))) / "data" / "penguins.csv").read_bytes()


def source_fingerprint(source: str, target: str) -> str:
    """A cheap hash of the raw source bytes and the target name, without parsing the table:
    what Dagster observes to tell whether `dataset` is stale."""
    if source == DEFAULT_SOURCE:
        raw = _palmerpenguins_bytes()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DatasetError(f"data source {str(path)!r} does not exist or is not a file; set {SOURCE_SETTING}")
        raw = path.read_bytes()
    return hashlib.sha256(target.encode() + b"\0" + raw).hexdigest()[:16]


def _read_palmerpenguins() -> pl.DataFrame:
    frame = pl.read_csv(_palmerpenguins_bytes(), null_values=["NA", ""])
    # `year` is a collection date, not a property of the penguin.
    return frame.drop("year")


def describe_features(frame: pl.DataFrame, target: str) -> tuple[list[str], list[str]]:
    """Split columns into numeric and categorical features (everything else is categorical)."""
    numeric, categorical = [], []
    for name, dtype in frame.schema.items():
        if name == target:
            continue
        if dtype.is_numeric() and dtype != pl.Boolean:
            numeric.append(name)
        else:
            categorical.append(name)
    return numeric, categorical


def normalise(frame: pl.DataFrame, target: str) -> pl.DataFrame:
    """Numeric features as Float64 (so a missing value is a NaN the model imputes), categorical
    features as strings; the target as a string label."""
    numeric, categorical = describe_features(frame, target)
    return frame.with_columns(
        *[pl.col(c).cast(pl.Float64) for c in numeric],
        *[pl.col(c).cast(pl.String) for c in categorical],
        pl.col(target).cast(pl.String),
    ).select([*numeric, *categorical, target])


def content_hash(frame: pl.DataFrame, target: str, split: SplitSpec) -> str:
    """Hash of what the dataset holds: the table, the target, the split settings and the
    split code itself (a new split algorithm is new data for every model downstream)."""
    digest = hashlib.sha256()
    digest.update(inspect.getsource(split_indices).encode())
    digest.update(f"{target}|{split.seed}|{split.validation_fraction}|{split.test_fraction}|".encode())
    digest.update(repr(frame.schema).encode())
    digest.update(frame.write_csv().encode())
    return digest.hexdigest()[:16]


def split_indices(labels: np.ndarray, split: SplitSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Seeded train/validation/test row indices, stratified by label when every class allows it.

    Plain numpy (no scikit-learn import): each class is shuffled with the seed and cut in the
    configured proportions, so every part keeps the class balance of the whole table."""
    rng = np.random.default_rng(split.seed)
    keys = np.array(["\0<null>" if label is None else str(label) for label in labels])
    classes, counts = np.unique(keys, return_counts=True)
    # Three parts need at least three rows of every class; otherwise a plain seeded shuffle
    # (the class-count check then fails and blocks training).
    stratified = len(classes) > 1 and counts.min() >= 3 and "\0<null>" not in classes
    groups = [np.flatnonzero(keys == c) for c in classes] if stratified else [np.arange(len(labels))]
    parts: tuple[list, list, list] = ([], [], [])
    for rows in groups:
        rows = rng.permutation(rows)
        n_test = max(1, round(len(rows) * split.test_fraction))
        n_val = max(1, round(len(rows) * split.validation_fraction))
        parts[2].append(rows[:n_test])
        parts[1].append(rows[n_test : n_test + n_val])
        parts[0].append(rows[n_test + n_val :])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test, stratified


def build_dataset(
    source: str, target: str, split: SplitSpec, min_rows: int = 50, min_rows_per_class: int = 10
) -> Dataset:
    raw = read_table(source)
    if target not in raw.columns:
        raise DatasetError(
            f"target column {target!r} is not in {source!r} (columns: {', '.join(raw.columns)}); set {TARGET_SETTING}"
        )
    if raw.width < 2:
        raise DatasetError(f"data source {source!r} has no feature columns besides the target {target!r}")
    table = normalise(raw, target)
    numeric, categorical = describe_features(table, target)
    labels = table.get_column(target).to_numpy()
    train_idx, val_idx, test_idx, stratified = split_indices(labels, split)
    return Dataset(
        source=source,
        target=target,
        numeric_features=numeric,
        categorical_features=categorical,
        table=table,
        train=table[train_idx],
        validation=table[val_idx],
        test=table[test_idx],
        content_hash=content_hash(table, target, split),
        stratified=stratified,
        split=split,
        min_rows=min_rows,
        min_rows_per_class=min_rows_per_class,
    )
