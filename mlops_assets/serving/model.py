"""Load a served model and describe its input: no Ray, no Dagster, MLflow only on demand.

A model source is either an MLflow model URI (`models:/NAME/VERSION`, `models:/NAME@alias`,
`runs:/...`; the local target) or a folder holding an MLflow model (`MLmodel` + `model.skops`;
the container targets, which bake the folder into the image). Both end in the same folder
loader, so the two targets serve exactly the same code path.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# MLflow signature column types -> how a JSON value is checked and how the column is built.
NUMERIC_TYPES = {"double": "float64", "float": "float32", "long": "float64", "integer": "float64"}
STRING_TYPES = {"string"}
BOOLEAN_TYPES = {"boolean"}


class ModelSourceError(ValueError):
    """The configured model source cannot be loaded or has no usable signature."""


@dataclass(frozen=True)
class Feature:
    name: str
    type: str  # MLflow signature type: double, float, long, integer, string, boolean

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    @property
    def categorical(self) -> bool:
        return self.type in STRING_TYPES or self.type in BOOLEAN_TYPES


@dataclass(frozen=True)
class ModelSource:
    """Where a replica loads its model from: the `user_config` of the deployment."""

    model_uri: str  # an MLflow URI or a local folder
    tracking_uri: str | None = None  # for `models:/` and `runs:/` URIs
    # For a folder: the registry name and version it holds (else read from the folder's
    # registered_model_meta, which names the version the artifacts were first registered as).
    name: str | None = None
    version: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelSource":
        if not config or not config.get("model_uri"):
            raise ModelSourceError("user_config needs `model_uri`: an MLflow model URI or a model folder")
        return cls(
            model_uri=str(config["model_uri"]),
            tracking_uri=config.get("tracking_uri") or None,
            name=config.get("model_name") or None,
            version=str(config["model_version"]) if config.get("model_version") is not None else None,
        )

    @property
    def is_folder(self) -> bool:
        return "://" not in self.model_uri and ":/" not in self.model_uri

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"model_uri": self.model_uri}
        for key, value in (("tracking_uri", self.tracking_uri), ("model_name", self.name), ("model_version", self.version)):
            if value:
                config[key] = value
        return config


@dataclass
class LoadedModel:
    pipeline: Any
    name: str
    version: str
    features: list[Feature]
    classes: list[str] = field(default_factory=list)
    # Per categorical feature, the categories the model was trained on (from its encoders):
    # the input summary counts those by name and everything else as unknown.
    categories: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def has_proba(self) -> bool:
        return hasattr(self.pipeline, "predict_proba") and bool(self.classes)


def features_from_signature(inputs_json: str | list) -> list[Feature]:
    """The model's input columns from its MLflow signature (`signature.inputs` of MLmodel)."""
    columns = json.loads(inputs_json) if isinstance(inputs_json, str) else inputs_json
    features = []
    for column in columns:
        if "name" not in column or column.get("type") not in {*NUMERIC_TYPES, *STRING_TYPES, *BOOLEAN_TYPES}:
            raise ModelSourceError(
                f"signature column {column} is not a named double/float/long/integer/string/boolean column; "
                "log the model with a column-based signature (mlflow.models.infer_signature on a DataFrame)"
            )
        features.append(Feature(column["name"], column["type"]))
    if not features:
        raise ModelSourceError("the model signature has no input columns")
    return features


def read_mlmodel(folder: Path) -> dict[str, Any]:
    import yaml

    path = folder / "MLmodel"
    if not path.is_file():
        raise ModelSourceError(f"{folder} holds no MLmodel file; point model_uri at an MLflow model folder")
    return yaml.safe_load(path.read_text())


def features_of_folder(folder: str | Path) -> list[Feature]:
    mlmodel = read_mlmodel(Path(folder))
    inputs = (mlmodel.get("signature") or {}).get("inputs")
    if not inputs:
        raise ModelSourceError(f"the model in {folder} has no signature; log it with `signature=`")
    return features_from_signature(inputs)


def download(source: ModelSource, destination: str | Path | None = None) -> tuple[Path, str, str]:
    """Fetch an MLflow URI into a local folder. Returns (folder, name, version)."""
    import mlflow
    from mlflow import MlflowClient

    if source.tracking_uri:
        mlflow.set_tracking_uri(source.tracking_uri)
        mlflow.set_registry_uri(source.tracking_uri)
    uri = source.model_uri
    name, version = "", ""
    if uri.startswith("models:/"):
        # Resolve an alias once so that the version reported is the version loaded.
        ref = uri.removeprefix("models:/")
        client = MlflowClient(tracking_uri=source.tracking_uri, registry_uri=source.tracking_uri)
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = str(client.get_model_version_by_alias(name, alias).version)
        else:
            name, _, version = ref.partition("/")
        uri = f"models:/{name}/{version}"
    dst = Path(destination or tempfile.mkdtemp(prefix="mlops-serving-model-"))
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    if not (folder / "MLmodel").is_file():  # some URIs download into a sub-folder
        found = next(iter(folder.rglob("MLmodel")), None)
        if found is None:
            raise ModelSourceError(f"{source.model_uri} downloaded no MLmodel file")
        folder = found.parent
    return folder, name or read_mlmodel(folder).get("model_uuid", "model"), version or "0"


def load_folder(folder: str | Path, name: str | None = None, version: str | None = None) -> LoadedModel:
    """Load an MLflow sklearn model saved with skops, without importing MLflow."""
    import skops.io

    folder = Path(folder)
    mlmodel = read_mlmodel(folder)
    flavor = (mlmodel.get("flavors") or {}).get("sklearn")
    if not flavor:
        raise ModelSourceError(f"the model in {folder} has no sklearn flavor")
    model_file = folder / flavor["pickled_model"]
    if flavor.get("serialization_format") == "skops":
        pipeline = skops.io.load(model_file, trusted=flavor.get("skops_trusted_types") or [])
    else:
        # Any other format would be pickle: refuse rather than unpickle an arbitrary file.
        raise ModelSourceError(
            f"the model in {folder} uses serialization {flavor.get('serialization_format')!r}; log it with skops"
        )
    meta = _registered_meta(folder)
    classes = [str(c) for c in getattr(pipeline, "classes_", [])]
    loaded = LoadedModel(
        pipeline=pipeline,
        name=name or meta.get("model_name") or str(mlmodel.get("model_uuid") or folder.name),
        version=version or str(meta.get("model_version") or mlmodel.get("model_uuid") or "0"),
        features=features_of_folder(folder),
        classes=classes,
        categories=known_categories(pipeline),
    )
    self_test(loaded, folder, mlmodel)
    return loaded


def self_test(model: LoadedModel, folder: Path, mlmodel: dict[str, Any]) -> None:
    """Predict the input example logged with the model (MLflow's `input_example.json`, split
    orient): a model that cannot predict its own example is refused before it serves a request.
    Folders without an example (or with one of other columns) are not tested."""
    info = mlmodel.get("saved_input_example_info") or {}
    path = folder / str(info.get("artifact_path") or "input_example.json")
    if info.get("type", "dataframe") != "dataframe" or info.get("pandas_orient", "split") != "split" or not path.is_file():
        return
    try:
        example = json.loads(path.read_text())
        columns, rows = list(example["columns"]), list(example["data"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not rows or not {f.name for f in model.features} <= set(columns):
        return
    index = {name: i for i, name in enumerate(columns)}
    data = {f.name: [row[index[f.name]] for row in rows] for f in model.features}
    try:
        labels, _ = predict(model, frame(model.features, data))
    except Exception as exc:
        raise ModelSourceError(
            f"model {model.name} version {model.version} cannot predict its own input example "
            f"({len(rows)} rows of {path.name}): {type(exc).__name__}: {exc}"
        ) from exc
    if len(labels) != len(rows):
        raise ModelSourceError(
            f"model {model.name} version {model.version} returned {len(labels)} labels for the {len(rows)} rows "
            f"of its input example"
        )


def known_categories(pipeline) -> dict[str, frozenset[str]]:
    """Training categories per input column, read from the encoders of a ColumnTransformer
    (OneHotEncoder / OrdinalEncoder `categories_`). Empty when the pipeline has none."""
    found: dict[str, frozenset[str]] = {}
    steps = getattr(pipeline, "steps", [("", pipeline)])
    for _, step in steps:
        for _, transformer, columns in getattr(step, "transformers_", []):
            encoder = transformer.steps[-1][1] if hasattr(transformer, "steps") else transformer
            categories = getattr(encoder, "categories_", None)
            if categories is None or isinstance(columns, slice) or len(columns) != len(categories):
                continue
            for column, values in zip(columns, categories):
                found[str(column)] = frozenset(str(v) for v in values if v is not None and v == v)
    return found


def _registered_meta(folder: Path) -> dict[str, Any]:
    import yaml

    path = folder / "registered_model_meta"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def load(source: ModelSource, cache_dir: str | Path | None = None) -> LoadedModel:
    """Load the model a `user_config` names: a folder directly, an MLflow URI via download."""
    if source.is_folder:
        if not Path(source.model_uri).is_dir():
            raise ModelSourceError(f"model folder {source.model_uri!r} does not exist")
        return load_folder(source.model_uri, source.name, source.version)
    import shutil

    destination = Path(tempfile.mkdtemp(prefix="mlops-model-", dir=cache_dir))
    try:
        folder, name, version = download(source, destination)
        return load_folder(folder, name, version)  # fully in memory: the files can go
    finally:
        shutil.rmtree(destination, ignore_errors=True)


def features_of(source: ModelSource) -> list[Feature]:
    """The input schema of a model source (used when building the app's OpenAPI schema)."""
    if source.is_folder:
        return features_of_folder(source.model_uri)
    import mlflow

    if source.tracking_uri:
        mlflow.set_tracking_uri(source.tracking_uri)
        mlflow.set_registry_uri(source.tracking_uri)
    info = mlflow.models.get_model_info(source.model_uri)
    if info.signature is None:
        raise ModelSourceError(f"{source.model_uri} has no signature; log it with `signature=`")
    return features_from_signature(info.signature.inputs.to_json())


def frame(features: list[Feature], columns: dict[str, list]):
    """The pandas frame the pipeline was trained on: numeric columns as floats (None -> NaN),
    string columns as objects with None for missing (as polars' to_pandas gives them)."""
    import pandas as pd

    data = {}
    for feature in features:
        values = columns[feature.name]
        if feature.numeric:
            data[feature.name] = np.array(values, dtype=NUMERIC_TYPES[feature.type])
        else:
            data[feature.name] = np.array(values, dtype=object)
    return pd.DataFrame(data, copy=False)


def predict(model: LoadedModel, x) -> tuple[list[str], list[list[float]] | None]:
    """Labels and, where the model has them, class probabilities.

    One `predict_proba` pass gives both: the label is the class of highest probability, which is
    what `predict` returns for the project's model families (tests check equality)."""
    if model.has_proba:
        proba = model.pipeline.predict_proba(x)
        labels = np.asarray(model.pipeline.classes_)[proba.argmax(axis=1)]
        if not np.isfinite(proba).all():  # extreme inputs can overflow a linear model: null, not a 500
            proba = np.where(np.isfinite(proba), proba, None)
        return [str(v) for v in labels], proba.tolist()
    return [str(v) for v in model.pipeline.predict(x)], None


def limit_threads() -> None:
    """One OpenMP/BLAS thread per replica: on a small shared machine OpenMP's spinning threads
    made one-row predictions 10-30x slower (measured 270 ms vs 9 ms on 2 cores)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
