"""Data-quality rules for a training table, as pure functions.

The `dataset` asset checks call these; each returns (passed, description, details) so the
same rule can be tested on a small frame without Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class QualityResult:
    passed: bool
    description: str
    details: dict


def target_column_usable(table: pl.DataFrame, target: str) -> QualityResult:
    if target not in table.columns:
        return QualityResult(False, f"target column {target!r} is missing", {"columns": table.columns})
    labels = table.get_column(target)
    missing = labels.null_count()
    classes = labels.drop_nulls().n_unique()
    passed = missing == 0 and classes >= 2
    return QualityResult(
        passed,
        f"target {target!r}: {classes} classes, {missing} rows without a label"
        + ("" if passed else " (need >= 2 classes and no missing labels)"),
        {"classes": classes, "missing_labels": missing},
    )


def no_feature_entirely_null(table: pl.DataFrame, target: str) -> QualityResult:
    null_columns = [c for c in table.columns if c != target and table.get_column(c).null_count() == table.height]
    return QualityResult(
        not null_columns,
        "every feature has values" if not null_columns else f"features with no value at all: {', '.join(null_columns)}",
        {"entirely_null_features": null_columns},
    )


def enough_rows_per_class(table: pl.DataFrame, target: str, minimum: int) -> QualityResult:
    counts = table.get_column(target).cast(pl.String).value_counts()
    per_class = {str(label): int(n) for label, n in counts.iter_rows()}
    short = {label: n for label, n in per_class.items() if n < minimum}
    return QualityResult(
        not short,
        f"every class has >= {minimum} rows" if not short else f"classes with fewer than {minimum} rows: {short}",
        {"rows_per_class": per_class, "minimum": minimum},
    )


def enough_rows(table: pl.DataFrame, minimum: int) -> QualityResult:
    return QualityResult(
        table.height >= minimum,
        f"{table.height} rows (minimum {minimum})",
        {"rows": table.height, "minimum": minimum},
    )
