"""The ONNX conversion and its parity with scikit-learn (ml/onnx_export.py, serving/onnx_engine.py),
on the project's three model families fitted on the bundled penguins data, in this process."""

import math

import numpy as np
import pytest

from mlops_assets.ml import onnx_export
from mlops_assets.ml.data import DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec, build_dataset
from mlops_assets.ml.models import FAMILIES, build_pipeline
from mlops_assets.serving import model as model_lib
from mlops_assets.serving import onnx_engine

pytestmark = pytest.mark.unit

PARAMS = {"logistic_regression": {}, "random_forest": {"n_estimators": 50}, "hist_gradient_boosting": {"max_iter": 30}}


@pytest.fixture(scope="module")
def dataset():
    return build_dataset(DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec())


@pytest.fixture(scope="module")
def fitted(dataset):
    x, y = dataset.xy("train")
    return {family: build_pipeline(family, dataset.numeric_features, dataset.categorical_features, PARAMS[family], 7).fit(x, y)
            for family in FAMILIES}


def _features(dataset):
    return [model_lib.Feature(n, "double") for n in dataset.numeric_features] + [
        model_lib.Feature(n, "string") for n in dataset.categorical_features]


def _both(pipeline, features):
    """The two LoadedModels the replicas would hold for this pipeline."""
    categories = model_lib.known_categories(pipeline)
    data = onnx_export.convert(pipeline, features, categories)
    sklearn = model_lib.LoadedModel(pipeline, "m", "1", features, [str(c) for c in pipeline.classes_], categories)
    onnx = model_lib.LoadedModel(None, "m", "1", features)
    onnx.onnx = onnx_engine.load(data, features, "the test model")
    onnx.classes, onnx.categories = onnx.onnx.classes, onnx.onnx.categories
    return sklearn, onnx


def _columns(frame) -> dict[str, list]:
    return {name: [None if isinstance(v, float) and math.isnan(v) else v for v in frame[name].tolist()]
            for name in frame.columns}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_converts_with_parity_on_all_rows(dataset, fitted, family):
    # The whole table (344 rows, with its missing values): same class everywhere, probabilities within 1e-4.
    sklearn, onnx = _both(fitted[family], _features(dataset))
    columns = _columns(dataset.table.select(dataset.features).to_pandas())
    result = onnx_export.parity(sklearn, onnx, columns)
    assert result.rows == dataset.table.height
    assert result.ok, result.describe()
    assert result.max_probability_difference < 1e-4
    assert onnx.classes == sklearn.classes
    assert onnx.categories == sklearn.categories and onnx.categories  # the input summary's known categories


@pytest.mark.parametrize("family", list(FAMILIES))
def test_missing_and_unknown_values_answer_like_scikit_learn(dataset, fitted, family):
    # Missing numbers, a missing category (None, as JSON null arrives), an unseen category, an
    # empty string: the compiled graph gives scikit-learn's classes and probabilities.
    sklearn, onnx = _both(fitted[family], _features(dataset))
    numeric, categorical = dataset.numeric_features, dataset.categorical_features
    rows = [
        {**{n: None for n in numeric}, **{c: None for c in categorical}},
        {**{n: 40.0 + i for i, n in enumerate(numeric)}, **{c: "Atlantis" for c in categorical}},
        {**{n: 45.0 for n in numeric}, **{c: "" for c in categorical}},
        {**{n: 1e6 for n in numeric}, **{c: "Biscoe" for c in categorical}},
    ]
    columns = {name: [row[name] for row in rows] for name in dataset.features}
    result = onnx_export.parity(sklearn, onnx, columns)
    assert result.rows == 4 and result.ok, result.describe()


def test_parity_reports_the_rows_that_differ(dataset, fitted):
    # A model that answers differently (another family's graph under this one's name) is
    # reported row by row, and parity is not ok.
    features = _features(dataset)
    sklearn, _ = _both(fitted["logistic_regression"], features)
    _, other = _both(fitted["random_forest"], features)
    columns = _columns(dataset.table.select(dataset.features).to_pandas())
    result = onnx_export.parity(sklearn, other, columns)
    assert not result.ok
    assert result.max_probability_difference > 1e-4
    if result.differing_count:
        assert result.differing_rows and "scikit-learn" in result.describe()
    assert result.tags()["mlops.onnx_parity_rows"] == str(dataset.table.height)


def test_a_pipeline_skl2onnx_cannot_convert_raises_conversion_error(dataset):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.linear_model import LogisticRegression

    x, y = dataset.xy("train")
    numeric = x[dataset.numeric_features].fillna(0)
    pipeline = Pipeline([("custom", FunctionTransformer(np.log1p)), ("model", LogisticRegression(max_iter=200))]).fit(numeric, y)
    with pytest.raises(onnx_export.ConversionError, match="skl2onnx cannot convert"):
        onnx_export.convert(pipeline, [model_lib.Feature(n, "double") for n in dataset.numeric_features], {})


def test_feeds_build_tensors_without_pandas():
    inputs = [("a", True), ("b", False)]
    tensors = onnx_engine.feeds(inputs, {"a": [1.5, None], "b": ["x", None]})
    assert tensors["a"].dtype == np.float32 and tensors["a"].shape == (2, 1) and np.isnan(tensors["a"][1, 0])
    assert tensors["b"].tolist() == [["x"], [onnx_engine.NONE_CATEGORY]]


def test_an_onnx_file_that_does_not_match_the_signature_is_refused(dataset, fitted):
    features = _features(dataset)
    data = onnx_export.convert(fitted["logistic_regression"], features, {})
    renamed = [model_lib.Feature(f"x_{f.name}", f.type) for f in features]
    with pytest.raises(onnx_engine.OnnxModelError, match="not the signature's columns"):
        onnx_engine.load(data, renamed, "the test model")
    with pytest.raises(onnx_engine.OnnxModelError, match="cannot load"):
        onnx_engine.load(b"not an onnx model", features, "the test model")


class FakeRegistry:
    """What choose_engine asks of the registry: the two loaded engines, and tags."""

    def __init__(self, both=None, raises: Exception | None = None) -> None:
        self.both, self.raises, self.tagged, self.loads = both, raises, {}, 0

    def load_both_engines(self, model_uri, files_sha256):
        self.loads += 1
        if self.raises:
            raise self.raises
        return self.both

    def tag_version(self, version, tags):
        self.tagged.update(tags)


def _decide(dataset, registry, tags=None):
    import logging

    from mlops_assets import ml_phase
    from mlops_assets.resources.mlflow_registry import LoggedCandidate, RegisteredVersion

    candidate = LoggedCandidate("logistic_regression", "run", "models:/m-1", {}, {}, files_sha256="{}")
    registered = RegisteredVersion("m", "3", "run", "src", dict(tags or {}))
    return ml_phase.choose_engine(registry, registered, candidate, dataset, logging.getLogger("test"))


def test_selection_serves_onnx_when_parity_holds_and_records_it(dataset, fitted):
    registry = FakeRegistry(_both(fitted["hist_gradient_boosting"], _features(dataset)))
    decision = _decide(dataset, registry)
    assert (decision.engine, decision.reason, decision.checked_now) == ("onnx", "", True)
    assert registry.tagged["mlops.serving_engine"] == "onnx" and registry.tagged["mlops.onnx_parity_dataset"] == dataset.content_hash
    # Test split plus validation sample: more rows than the test split alone.
    assert int(registry.tagged["mlops.onnx_parity_rows"]) > dataset.test.height
    # A no-change run (same version, same data) reads the tags back and loads nothing.
    again = FakeRegistry(raises=AssertionError("must not load"))
    assert _decide(dataset, again, registry.tagged).engine == "onnx" and again.loads == 0


def test_selection_falls_back_to_scikit_learn_with_the_reason_never_failing(dataset, fitted):
    from mlops_assets.serving import model as model_lib
    from mlops_assets.serving import onnx_engine

    features = _features(dataset)
    sklearn, _ = _both(fitted["logistic_regression"], features)
    _, other = _both(fitted["random_forest"], features)
    missed = FakeRegistry((sklearn, other))
    decision = _decide(dataset, missed)
    assert decision.engine == "sklearn" and decision.reason.startswith("ONNX parity missed")
    assert missed.tagged["mlops.serving_engine"] == "sklearn" and "largest probability difference" in missed.tagged[
        "mlops.serving_engine_reason"]
    absent = FakeRegistry(raises=onnx_engine.OnnxModelError("the model has no model.onnx"))
    assert _decide(dataset, absent).reason == "no usable ONNX model: the model has no model.onnx"
    # Files that fail their manifest are not an engine question: the asset fails.
    with pytest.raises(model_lib.ModelIntegrityError):
        _decide(dataset, FakeRegistry(raises=model_lib.ModelIntegrityError("changed since it was logged")))
