"""Load a served model and describe its input: no Ray, no Dagster, MLflow only on demand.

A model source is either an MLflow model URI (`models:/NAME/VERSION`, `models:/NAME@alias`,
`runs:/...`; the local target) or a folder holding an MLflow model (`MLmodel` + `model.skops`;
the container targets, which bake the folder into the image). Both end in the same folder
loader, so the two targets serve exactly the same code path.

Nothing in a model folder is trusted by itself (docs/security.md, "Model artifacts"): the
folder's files must match the sha256 manifest recorded when the model was logged (a registry
tag, or the deployer's config), the skops types allowed are the ones listed here, pickle is
never loaded, and every path `MLmodel` names stays inside the folder. Before a replica takes
traffic it predicts the model's validation sample: rows covering every category and every
missing value of the training data.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import onnx_engine

# MLflow signature column types -> how a JSON value is checked and how the column is built.
NUMERIC_TYPES = {"double": "float64", "float": "float32", "long": "float64", "integer": "float64"}
STRING_TYPES = {"string"}
BOOLEAN_TYPES = {"boolean"}


# The only types a skops model file may hold beyond skops' defaults: those of the project's model
# families (ml/models.py). Kept here, never read from MLmodel (whoever edits the model files
# would edit that list too). A new family needing another type fails at logging time with
# the type's name: review it, then add it here.
TRUSTED_TYPES = frozenset({
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
})
# The sha256 of every file of a model folder, as compact JSON {relative path: hex digest}:
# a run tag of the candidate and a tag of the registered version (set when it is logged),
# `model_files_sha256` in a replica's user_config, and this variable in the API image.
MANIFEST_TAG = "mlops.files_sha256"
MANIFEST_ENV = "MLOPS_MODEL_FILES_SHA256"
# Not hashed: written after registration (MLflow's download, the image build) and only names
# the registry name and version the API reports.
UNHASHED = frozenset({"registered_model_meta"})
# Rows built from the training data at training time (ml/validation.py), logged with the model.
VALIDATION_SAMPLE = "validation_sample.json"


class ModelSourceError(ValueError):
    """The configured model source cannot be loaded or has no usable signature."""


class ModelIntegrityError(ModelSourceError):
    """The model files are not the ones recorded, or name something the loader refuses."""


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
    # The manifest the files must match (compact JSON, see MANIFEST_TAG). For a `models:/NAME/VERSION`
    # URI it is read from the registry when not given; a folder without one is refused unless
    # MLOPS_MODEL_FILES_SHA256 holds it (the API image).
    files_sha256: str | None = None
    # Which engine should serve (onnx_engine.ENGINES), as selected_model recorded it with the
    # version (ENGINE_TAG), and why not ONNX when it is "sklearn". None: the registry's tag for
    # a `models:/NAME/VERSION` URI, MLOPS_SERVING_ENGINE for a folder (the image), else sklearn.
    engine: str | None = None
    engine_reason: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelSource":
        if not config or not config.get("model_uri"):
            raise ModelSourceError("user_config needs `model_uri`: an MLflow model URI or a model folder")
        return cls(
            model_uri=str(config["model_uri"]),
            tracking_uri=config.get("tracking_uri") or None,
            name=config.get("model_name") or None,
            version=str(config["model_version"]) if config.get("model_version") is not None else None,
            files_sha256=config.get("model_files_sha256") or None,
            engine=config.get("serving_engine") or None,
            engine_reason=config.get("serving_engine_reason") or None,
        )

    @property
    def is_folder(self) -> bool:
        return "://" not in self.model_uri and ":/" not in self.model_uri

    def to_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"model_uri": self.model_uri}
        for key, value in (("tracking_uri", self.tracking_uri), ("model_name", self.name), ("model_version", self.version),
                           ("model_files_sha256", self.files_sha256), ("serving_engine", self.engine),
                           ("serving_engine_reason", self.engine_reason)):
            if value:
                config[key] = value
        return config


@dataclass
class LoadedModel:
    pipeline: Any  # the scikit-learn pipeline (None when ONNX Runtime serves)
    name: str
    version: str
    features: list[Feature]
    classes: list[str] = field(default_factory=list)
    # Per categorical feature, the categories the model was trained on (from its encoders):
    # the input summary counts those by name and everything else as unknown.
    categories: dict[str, frozenset[str]] = field(default_factory=dict)
    onnx: Any = None  # onnx_engine.OnnxModel when ONNX Runtime serves
    # Why the scikit-learn pipeline serves although ONNX was asked or recorded ("" otherwise).
    engine_reason: str = ""

    @property
    def engine(self) -> str:
        return "onnx" if self.onnx is not None else "sklearn"

    @property
    def has_proba(self) -> bool:
        return self.onnx is not None or (hasattr(self.pipeline, "predict_proba") and bool(self.classes))


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


# -- integrity: the manifest, paths, allowed types ------------------------------------------------
def files_manifest(folder: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file in the folder (but UNHASHED). A symlink anywhere in
    it is refused: a model folder holds plain files."""
    root = Path(folder)
    manifest = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise ModelIntegrityError(f"{path} is a symlink; a model folder holds only plain files")
        if path.is_file() and relative not in UNHASHED:
            manifest[relative] = _sha256(path)
    return manifest


def manifest_text(manifest: dict[str, str]) -> str:
    return json.dumps(dict(sorted(manifest.items())), separators=(",", ":"))


def parse_manifest(text: str | None, where: str) -> dict[str, str]:
    if not text:
        raise ModelIntegrityError(
            f"{where} has no sha256 manifest of its files (tag {MANIFEST_TAG}); only models logged by this "
            "pipeline's training carry one: retrain (`make run`) or register the model through selected_model"
        )
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not manifest or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in manifest.items()
    ):
        raise ModelIntegrityError(f"the sha256 manifest of {where} is not a JSON object of file -> sha256: {text[:200]!r}")
    return manifest


def verify_files(folder: str | Path, manifest: dict[str, str], where: str) -> None:
    """Every file the manifest names is in the folder with that sha256; nothing else is hashed."""
    root = Path(folder)
    for relative in manifest:
        inside(root, relative, f"the manifest of {where}")
    actual = files_manifest(root)
    missing = sorted(set(manifest) - set(actual))
    changed = sorted(name for name in manifest if name in actual and actual[name] != manifest[name])
    if missing or changed:
        problems = [f"changed since it was logged: {', '.join(changed)}"] if changed else []
        problems += [f"missing: {', '.join(missing)}"] if missing else []
        raise ModelIntegrityError(
            f"the files of {where} do not match the sha256 manifest recorded when it was logged ({'; '.join(problems)}); "
            "the model was not loaded. Re-register the model from a training run (`make run`) instead of editing its files"
        )


def inside(folder: Path, relative: str, what: str) -> Path:
    """`folder / relative`, refused when it leaves the folder (`..`, an absolute path, a symlink)."""
    root = Path(folder).resolve()
    path = (root / str(relative)).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ModelIntegrityError(f"{what} names {relative!r}, a path outside the model folder {folder}; refused")
    return path


def registered_manifest(tracking_uri: str | None, name: str, version: str) -> str | None:
    """The manifest tag of registered version NAME/VERSION (None if it has none)."""
    return registered_serving(tracking_uri, name, version)[0]


def registered_serving(tracking_uri: str | None, name: str, version: str) -> tuple[str | None, str, str]:
    """(manifest, engine, why not ONNX) as selected_model tagged registered version NAME/VERSION.
    A version without an engine tag (registered before models were converted) is served by
    its scikit-learn pipeline."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    tags = client.get_model_version(name, version).tags or {}
    engine = tags.get(onnx_engine.ENGINE_TAG) or "sklearn"
    reason = tags.get(onnx_engine.ENGINE_REASON_TAG) or (
        "" if onnx_engine.ENGINE_TAG in tags else "registered without an ONNX parity check (before models were converted)")
    return tags.get(MANIFEST_TAG), engine, reason


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def download(source: ModelSource, destination: str | Path | None = None) -> tuple[Path, str, str]:
    """Fetch an MLflow URI into a local folder. Returns (folder, name, version); the files
    are not checked here (load and load_folder do that)."""
    import mlflow
    from mlflow import MlflowClient

    if source.tracking_uri:
        mlflow.set_tracking_uri(source.tracking_uri)
        mlflow.set_registry_uri(source.tracking_uri)
    uri = source.model_uri
    name, version = "", ""
    if uri.startswith("models:/") and ("/" in uri.removeprefix("models:/") or "@" in uri):
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


def load_folder(folder: str | Path, name: str | None = None, version: str | None = None,
                files_sha256: str | None = None, engine: str | None = None, engine_reason: str | None = None,
                fallback: bool = True) -> LoadedModel:
    """Load an MLflow model folder for serving, without importing MLflow.

    The files must match `files_sha256` (else MLOPS_MODEL_FILES_SHA256), checked before
    anything in them is read. `engine` (else MLOPS_SERVING_ENGINE, else "sklearn") picks ONNX
    Runtime over `model.onnx` or the skops pipeline; an ONNX model that cannot serve (absent,
    unloadable, failing its self-test) falls back to the pipeline with the reason in
    `engine_reason`, unless `fallback` is False. A file that fails the manifest never falls
    back. Either way the replica then predicts the model's validation sample."""
    folder = Path(folder)
    where = f"the model in {folder}" + (f" (version {version})" if version else "")
    manifest = parse_manifest(files_sha256 or os.environ.get(MANIFEST_ENV), where)
    verify_files(folder, manifest, where)

    def hashed(relative: str, what: str) -> Path:
        path = inside(folder, relative, what)
        if path.relative_to(folder.resolve()).as_posix() not in manifest:
            raise ModelIntegrityError(f"{what} names {relative!r}, a file the sha256 manifest of {where} does not cover")
        return path

    hashed("MLmodel", "the loader")
    mlmodel = read_mlmodel(folder)
    meta = _registered_meta(folder)
    name = name or meta.get("model_name") or str(mlmodel.get("model_uuid") or folder.name)
    version = version or str(meta.get("model_version") or mlmodel.get("model_uuid") or "0")
    features = features_of_folder(folder)
    if engine is None:
        engine, engine_reason = os.environ.get(onnx_engine.ENGINE_ENV) or "sklearn", os.environ.get(onnx_engine.ENGINE_REASON_ENV)
    if engine not in onnx_engine.ENGINES:
        raise ModelSourceError(f"serving engine {engine!r} for {where}: use one of {', '.join(onnx_engine.ENGINES)}")
    reason = engine_reason or ""
    if engine == "onnx":
        try:
            loaded = LoadedModel(None, name, version, features)
            loaded.onnx = _onnx_model(folder, manifest, features, where, hashed)
            loaded.classes, loaded.categories = loaded.onnx.classes, loaded.onnx.categories
            self_test(loaded, folder, mlmodel, hashed)
            return loaded
        except ModelIntegrityError:
            raise
        except (onnx_engine.OnnxModelError, ModelSourceError) as exc:
            if not fallback:
                raise
            reason = f"ONNX Runtime could not serve it: {str(exc)[:400]}"
    pipeline = _sklearn_pipeline(folder, manifest, mlmodel, where, hashed)
    loaded = LoadedModel(pipeline, name, version, features, [str(c) for c in getattr(pipeline, "classes_", [])],
                         known_categories(pipeline), engine_reason=reason)
    self_test(loaded, folder, mlmodel, hashed)
    return loaded


def _onnx_model(folder: Path, manifest: dict[str, str], features: list[Feature], where: str, hashed):
    if onnx_engine.MODEL_FILE not in manifest:
        raise onnx_engine.OnnxModelError(
            f"{where} has no {onnx_engine.MODEL_FILE} (its pipeline was not converted when it was logged)")
    data = _hashed_bytes(folder, hashed(onnx_engine.MODEL_FILE, "the ONNX engine"), manifest, where)
    return onnx_engine.load(data, features, where)


def _hashed_bytes(folder: Path, path: Path, manifest: dict[str, str], where: str) -> bytes:
    """The file's bytes, read once and checked against the manifest: the bytes loaded are the
    bytes hashed (no swap between the check and the load)."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest[path.relative_to(folder.resolve()).as_posix()]:
        raise ModelIntegrityError(f"{path.name} of {where} changed while it was being loaded; refused")
    return data


def _sklearn_pipeline(folder: Path, manifest: dict[str, str], mlmodel: dict[str, Any], where: str, hashed):
    """The skops pipeline: the sklearn flavor's file, with the allowed types only, never pickle."""
    try:
        import skops.io
    except ImportError as exc:
        raise ModelSourceError(f"{where}: scikit-learn/skops are not installed here ({exc}); this image serves "
                               "through ONNX Runtime only") from exc

    flavor = (mlmodel.get("flavors") or {}).get("sklearn")
    if not flavor:
        raise ModelSourceError(f"the model in {folder} has no sklearn flavor")
    if flavor.get("serialization_format") != "skops":
        # Any other format would be pickle: refuse rather than unpickle an arbitrary file.
        raise ModelIntegrityError(
            f"the model in {folder} uses serialization {flavor.get('serialization_format')!r}; only skops is loaded "
            "(pickle and cloudpickle can run any code): log it with serialization_format='skops'"
        )
    model_file = hashed(str(flavor.get("pickled_model") or ""), "MLmodel's flavors.sklearn.pickled_model")
    listed = set(flavor.get("skops_trusted_types") or [])
    if listed - TRUSTED_TYPES:
        raise ModelIntegrityError(
            f"MLmodel of {where} lists skops_trusted_types outside the allow-list in mlops_assets/serving/model.py: "
            f"{', '.join(sorted(listed - TRUSTED_TYPES))}; the list in MLmodel is not trusted, refused"
        )
    data = _hashed_bytes(folder, model_file, manifest, where)
    try:
        needed = set(skops.io.get_untrusted_types(data=data))
    except Exception as exc:  # not a skops archive
        raise ModelSourceError(f"could not read {model_file.name} of {where}: {type(exc).__name__}: {exc}") from exc
    if needed - TRUSTED_TYPES:
        raise ModelIntegrityError(
            f"{model_file.name} of {where} holds types outside the allow-list in mlops_assets/serving/model.py: "
            f"{', '.join(sorted(needed - TRUSTED_TYPES))}; refused (review a new model family's types, then add them there)"
        )
    return skops.io.loads(data, trusted=sorted(needed))


def _split_rows(path: Path) -> tuple[list, list]:
    example = json.loads(path.read_text())
    return list(example["columns"]), list(example["data"])


def _predict_rows(model: LoadedModel, columns: list, rows: list, what: str) -> None:
    index = {name: i for i, name in enumerate(columns)}
    data = {f.name: [row[index[f.name]] for row in rows] for f in model.features}
    try:
        labels, _ = predict_columns(model, data)
    except Exception as exc:
        raise ModelSourceError(
            f"model {model.name} version {model.version} ({model.engine}) cannot predict {what}: {type(exc).__name__}: {exc}"
        ) from exc
    if len(labels) != len(rows):
        raise ModelSourceError(
            f"model {model.name} version {model.version} returned {len(labels)} labels for the {len(rows)} rows of {what}"
        )


def self_test(model: LoadedModel, folder: Path, mlmodel: dict[str, Any], hashed) -> None:
    """Before a replica takes traffic: predict the input example logged with the model
    (MLflow's `input_example.json`, split orient, if any) and the validation sample (required:
    every category and every missing value of the training data, ml/validation.py)."""
    info = mlmodel.get("saved_input_example_info") or {}
    if info and info.get("type", "dataframe") == "dataframe" and info.get("pandas_orient", "split") == "split":
        path = hashed(str(info.get("artifact_path") or "input_example.json"), "MLmodel's saved_input_example_info")
        try:
            columns, rows = _split_rows(path)
        except (OSError, ValueError, KeyError, TypeError):
            columns, rows = [], []
        if rows and {f.name for f in model.features} <= set(columns):
            _predict_rows(model, columns, rows, f"its own input example ({len(rows)} rows of {path.name})")
    path = hashed(VALIDATION_SAMPLE, "the loader")
    try:
        columns, rows = _split_rows(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelSourceError(
            f"the model in {folder} has no readable validation sample ({VALIDATION_SAMPLE}: {type(exc).__name__}); "
            "models are logged with one by this pipeline's training: retrain (`make run`)"
        ) from exc
    absent = [f.name for f in model.features if f.name not in columns]
    if not rows or absent:
        raise ModelSourceError(
            f"the validation sample of the model in {folder} has {len(rows)} rows and lacks columns {absent}; retrain (`make run`)"
        )
    _predict_rows(model, columns, rows, f"its validation sample ({len(rows)} rows covering every training category "
                                        "and missing value)")


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
        return load_folder(source.model_uri, source.name, source.version, source.files_sha256, source.engine,
                           source.engine_reason)
    import shutil

    destination = Path(tempfile.mkdtemp(prefix="mlops-model-", dir=cache_dir))
    try:
        folder, name, version = download(source, destination)
        manifest, engine, reason = source.files_sha256, source.engine, source.engine_reason
        if source.model_uri.startswith("models:/") and version != "0" and (manifest is None or engine is None):
            registered, registered_engine, registered_reason = registered_serving(source.tracking_uri, name, version)
            manifest = manifest if manifest is not None else registered
            if engine is None:
                engine, reason = registered_engine, registered_reason
        parse_manifest(manifest, f"model {source.model_uri} (version {version})")  # never the image's variable
        # Never the image's variables either: an MLflow URI says its own engine (default sklearn).
        return load_folder(folder, name, version, manifest, engine or "sklearn", reason)  # in memory: the files can go
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


def predict_columns(model: LoadedModel, columns: dict[str, list]) -> tuple[list[str], list[list[float]] | None]:
    """Labels and probabilities for request columns ({feature: values}, None = missing), by the
    model's engine: ONNX Runtime on tensors built from the columns, or the pipeline on a frame."""
    if model.onnx is not None:
        return model.onnx.predict(columns)
    return predict(model, frame(model.features, columns))


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
