"""Code tests of loading, normalising and splitting (no Dagster, no MLflow)."""

import json

import numpy as np
import polars as pl
import pytest

from mlops_assets.ml import data as ml_data
from mlops_assets.ml.data import DatasetError, SplitSpec, build_dataset

pytestmark = pytest.mark.unit


def test_default_source_is_bundled_penguins_with_categoricals_and_missing_values():
    dataset = build_dataset(ml_data.DEFAULT_SOURCE, "species", SplitSpec())
    assert dataset.table.height == 344
    assert set(dataset.categorical_features) == {"island", "sex"}
    assert "bill_length_mm" in dataset.numeric_features
    assert dataset.table.null_count().sum_horizontal()[0] > 0  # the real data has gaps
    assert dataset.stratified


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp: tmp / "nope.csv", ["does not exist", "MLOPS_DATASET"]),
        (lambda tmp: tmp, ["is a folder", "MLOPS_DATASET"]),
        (lambda tmp: _write(tmp / "empty.csv", b""), ["is empty", "MLOPS_DATASET"]),
        (lambda tmp: _write(tmp / "header.csv", b"a,b,label\n"), ["has no rows", "MLOPS_DATASET"]),
        (lambda tmp: _write(tmp / "broken.parquet", b"this is not parquet"), ["could not be read", "MLOPS_DATASET"]),
        (lambda tmp: _write(tmp / "data.xlsx", b"x"), ["only .csv and .parquet", "MLOPS_DATASET"]),
    ],
    ids=["missing", "folder", "empty", "header-only", "unreadable", "wrong-suffix"],
)
def test_bad_sources_name_the_problem_and_the_setting(tmp_path, make, expected):
    with pytest.raises(DatasetError) as error:
        build_dataset(str(make(tmp_path)), "label", SplitSpec())
    for fragment in expected:
        assert fragment in str(error.value)


def test_missing_target_column_names_the_setting(tmp_path):
    path = _write(tmp_path / "d.csv", b"a,b\n1,2\n3,4\n")
    with pytest.raises(DatasetError, match="target column 'label' is not in .*MLOPS_TARGET_COLUMN"):
        build_dataset(str(path), "label", SplitSpec())


def test_split_is_seeded_stratified_and_disjoint():
    labels = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10, dtype=object)
    first = ml_data.split_indices(labels, SplitSpec(seed=7))
    again = ml_data.split_indices(labels, SplitSpec(seed=7))
    other = ml_data.split_indices(labels, SplitSpec(seed=8))
    assert all(np.array_equal(x, y) for x, y in zip(first[:3], again[:3]))
    assert not np.array_equal(first[2], other[2])
    train, val, test, stratified = first
    assert stratified
    assert len(set(train) | set(val) | set(test)) == len(labels) == len(train) + len(val) + len(test)
    # every part keeps the class balance (within one row per class)
    for part, fraction in ((test, 0.2), (val, 0.2)):
        counts = {c: int((labels[part] == c).sum()) for c in "abc"}
        assert counts == {"a": 12, "b": 6, "c": 2}


def test_tiny_class_falls_back_to_unstratified_split():
    labels = np.array(["a"] * 20 + ["b"] * 2, dtype=object)
    *_, stratified = ml_data.split_indices(labels, SplitSpec())
    assert not stratified


def test_content_hash_follows_content_not_row_identity(tmp_path):
    frame = pl.DataFrame({"x": [1.0, 2.0, 3.0] * 10, "label": ["a", "b", "c"] * 10})
    base = ml_data.content_hash(frame, "label", SplitSpec())
    assert base == ml_data.content_hash(frame.clone(), "label", SplitSpec())
    assert base != ml_data.content_hash(frame.with_columns(pl.col("x") * 2), "label", SplitSpec())
    assert base != ml_data.content_hash(frame, "label", SplitSpec(seed=1))


def test_parquet_and_csv_give_the_same_dataset(tmp_path):
    frame = pl.DataFrame({"x": [float(i) for i in range(60)], "colour": ["red", None, "blue"] * 20, "label": ["a", "b"] * 30})
    frame.write_csv(tmp_path / "d.csv")
    frame.write_parquet(tmp_path / "d.parquet")
    from_csv = build_dataset(str(tmp_path / "d.csv"), "label", SplitSpec())
    from_parquet = build_dataset(str(tmp_path / "d.parquet"), "label", SplitSpec())
    assert from_csv.content_hash == from_parquet.content_hash
    assert from_csv.categorical_features == ["colour"]


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def test_validation_sample_covers_every_category_and_every_missing_value_of_training():
    from mlops_assets.ml.validation import sample_json, validation_sample

    train = pl.DataFrame({
        "x": [1.0, 2.0, None, 4.0, 5.0, 6.0, 7.0, 8.0],
        "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],  # never missing: no missing value is asked for
        "colour": ["red", "red", "blue", None, "green", "red", "blue", "green"],
        "size": ["S", "M", "S", "S", "S", "L", "M", "S"],
    })
    sample = validation_sample(train, ["x", "y"], ["colour", "size"])
    rows = sample.to_dicts()
    assert {r["colour"] for r in rows} == {"red", "blue", None, "green"}
    assert {r["size"] for r in rows} == {"S", "M", "L"}
    assert any(r["x"] is None for r in rows) and all(r["y"] is not None for r in rows)
    assert len(rows) < train.height  # real rows, each covering something new
    assert all(r in train.to_dicts() for r in rows)
    decoded = json.loads(sample_json(sample))
    assert decoded["columns"] == ["x", "y", "colour", "size"] and len(decoded["data"]) == len(rows)


def test_the_no_change_path_imports_neither_pandas_nor_ray():
    """What a no-change `make run` evaluates (the data source's fingerprint, the smoke rows of
    `deployed_api`, the training profile of `dashboards`, the definitions) stays clear of pandas
    and Ray: importing them cost about 1.5 s of a 6 s run (docs/performance.md)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "import mlops_assets.definitions\n"
        "from mlops_assets.ml.data import DEFAULT_SOURCE, SplitSpec, build_dataset, source_fingerprint\n"
        "from mlops_assets.assets.deployment import smoke_rows\n"
        "from mlops_assets.monitoring.profile import training_profile\n"
        "source_fingerprint(DEFAULT_SOURCE, 'species')\n"
        "dataset = build_dataset(DEFAULT_SOURCE, 'species', SplitSpec())\n"
        "instances, truth = smoke_rows(dataset)\n"
        "assert len(instances) == len(truth) == 3, (instances, truth)\n"
        "training_profile(dataset)\n"
        "print(sorted(m for m in ('pandas', 'ray', 'sklearn', 'mlflow') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"imported on the no-change path: {done.stdout.strip()}"


def test_bundled_source_bytes_are_the_packaged_csv():
    from importlib.resources import files

    assert ml_data._palmerpenguins_bytes() == files("palmerpenguins").joinpath("data/penguins.csv").read_bytes()
