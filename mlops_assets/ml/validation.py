"""The validation sample logged with every model: training rows that together hold every
category of every categorical column and a missing value in every column the training data
has one missing. A replica predicts it before it takes traffic (serving/model.py), so a model
that predicts its own input example but fails on real rows never serves a request."""

from __future__ import annotations

import json
import math
from typing import Any

import polars as pl


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def validation_sample(train: pl.DataFrame, numeric: list[str], categorical: list[str]) -> pl.DataFrame:
    """Real training rows, picked greedily (first row that covers something new) until every
    (categorical column, category), every categorical column's missing value and every
    numeric column's missing value seen in `train` is covered. At least one row."""
    features = [*numeric, *categorical]
    needed: set[tuple[str, Any]] = set()
    for column in categorical:
        needed |= {(column, None if missing(v) else v) for v in train.get_column(column).unique().to_list()}
    for column in numeric:
        values = train.get_column(column)
        if values.null_count() or values.is_nan().any():
            needed.add((column, None))
    chosen, covered = [], set()
    for index, row in enumerate(train.select(features).iter_rows(named=True)):
        if covered >= needed:
            break
        holds = {(c, None if missing(row[c]) else row[c]) for c in categorical}
        holds |= {(c, None) for c in numeric if missing(row[c])}
        if (holds & needed) - covered:
            chosen.append(index)
            covered |= holds & needed
    return train.select(features)[chosen or [0]]


def sample_json(sample: pl.DataFrame) -> str:
    """pandas' split orient (what MLflow writes for an input example), missing values as null."""
    rows = [[None if missing(v) else v for v in row] for row in sample.iter_rows()]
    return json.dumps({"columns": sample.columns, "data": rows})
