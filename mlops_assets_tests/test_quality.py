"""Each data-quality rule passes on good data and fails on the bad data it exists for."""

import pytest
import polars as pl

from mlops_assets.ml import quality

pytestmark = pytest.mark.unit

GOOD = pl.DataFrame({"x": [1.0, None, 3.0, 4.0] * 5, "c": ["u", "v", None, "u"] * 5, "y": ["a", "b"] * 10})


def test_target_column_usable():
    assert quality.target_column_usable(GOOD, "y").passed
    assert not quality.target_column_usable(GOOD, "missing").passed
    assert not quality.target_column_usable(GOOD.with_columns(pl.lit("a").alias("y")), "y").passed
    with_gap = GOOD.with_columns(pl.when(pl.col("x") == 1.0).then(None).otherwise(pl.col("y")).alias("y"))
    outcome = quality.target_column_usable(with_gap, "y")
    assert not outcome.passed and outcome.details["missing_labels"] == 5


def test_no_feature_entirely_null():
    assert quality.no_feature_entirely_null(GOOD, "y").passed
    bad = GOOD.with_columns(pl.lit(None, dtype=pl.Float64).alias("empty"))
    outcome = quality.no_feature_entirely_null(bad, "y")
    assert not outcome.passed and outcome.details["entirely_null_features"] == ["empty"]


def test_enough_rows_per_class():
    assert quality.enough_rows_per_class(GOOD, "y", 10).passed
    outcome = quality.enough_rows_per_class(GOOD, "y", 11)
    assert not outcome.passed and "fewer than 11" in outcome.description


def test_enough_rows():
    assert quality.enough_rows(GOOD, 20).passed
    assert not quality.enough_rows(GOOD, 21).passed
