"""The compiled engine: a model's whole pipeline (preprocessing included) as an ONNX graph, run
by ONNX Runtime with inputs built straight from the request's columns, no pandas.

`model.onnx` is written beside the skops file when a candidate is logged (ml/onnx_export.py),
so the sha256 manifest of the model folder covers it; `selected_model` checks its parity with
the scikit-learn pipeline and records which engine serves the version (registry tags
ENGINE_TAG and ENGINE_REASON_TAG). Needs onnxruntime and numpy only.

Inputs: one graph input per feature, shape [N, 1]: numeric columns as float32 (null -> NaN,
imputed by the graph), categorical columns as strings. A missing category is fed as the string
"None": in training, polars gives pandas `None` for a missing string, which scikit-learn's
imputer (missing_values=NaN) leaves alone and the encoder learns as a category of its own;
skl2onnx writes that category as "None". A float NaN in a categorical column (which the
scikit-learn imputer does replace) is fed as MISSING_MARKER, the string the converted imputer
replaces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL_FILE = "model.onnx"
# Registered-version tags written by selected_model: which engine serves the version and why.
ENGINE_TAG = "mlops.serving_engine"
ENGINE_REASON_TAG = "mlops.serving_engine_reason"
ENGINES = ("onnx", "sklearn")
# How the image tells its replicas which engine to use (beside MLOPS_MODEL_FILES_SHA256).
ENGINE_ENV = "MLOPS_SERVING_ENGINE"
ENGINE_REASON_ENV = "MLOPS_SERVING_ENGINE_REASON"
# The string the converted categorical imputers treat as missing (ml/onnx_export.py).
MISSING_MARKER = ""
# What a pandas None becomes in skl2onnx's string categories.
NONE_CATEGORY = "None"
# metadata_props of the ONNX model, written at conversion.
CLASSES_PROP = "mlops.classes"
CATEGORIES_PROP = "mlops.categories"


class OnnxModelError(ValueError):
    """The ONNX file cannot be loaded or does not match the model's signature."""


@dataclass
class OnnxModel:
    """An ONNX Runtime session (one intra-op thread: one replica, one core) and what the API
    needs around it: the input names per feature, the class order, the training categories."""

    session: Any
    # (graph input name, numeric?) in feature order; load() checked that the names are the features'
    inputs: list[tuple[str, bool]]
    classes: list[str]
    categories: dict[str, frozenset[str]]
    probabilities_output: str

    def predict(self, columns: dict[str, list]) -> tuple[list[str], list[list[float]]]:
        """Labels (class of highest probability, as the scikit-learn path) and probabilities."""
        probabilities = self.session.run([self.probabilities_output], feeds(self.inputs, columns))[0]
        labels = np.asarray(self.classes, dtype=object)[probabilities.argmax(axis=1)]
        if not np.isfinite(probabilities).all():  # as the scikit-learn path: null, not a 500
            return [str(v) for v in labels], np.where(np.isfinite(probabilities), probabilities, None).tolist()
        return [str(v) for v in labels], probabilities.astype(np.float64).tolist()


def _categorical(value: Any) -> str:
    if value is None:
        return NONE_CATEGORY
    if isinstance(value, float) and value != value:
        return MISSING_MARKER
    return str(value)


def feeds(inputs: list[tuple[str, bool]], columns: dict[str, list]) -> dict[str, np.ndarray]:
    """The session's input tensors from request columns ({feature: values}, None = missing);
    each graph input is named after its feature."""
    tensors = {}
    for input_name, numeric in inputs:
        values = columns[input_name]
        if numeric:
            tensors[input_name] = np.array(values, dtype=np.float32).reshape(-1, 1)  # None -> NaN
        else:
            tensors[input_name] = np.array([_categorical(v) for v in values], dtype=object).reshape(-1, 1)
    return tensors


def load(data: bytes, features: list, where: str) -> OnnxModel:
    """A session for the ONNX bytes of a model whose signature is `features` (serving/model.py
    Feature list): one graph input per feature, in order, of the matching kind."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise OnnxModelError(f"onnxruntime is not installed here ({exc}); the scikit-learn pipeline serves instead") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxModelError(f"ONNX Runtime cannot load {MODEL_FILE} of {where}: {type(exc).__name__}: {exc}") from exc
    graph_inputs = session.get_inputs()
    if [i.name for i in graph_inputs] != [f.name for f in features]:
        raise OnnxModelError(f"{MODEL_FILE} of {where} takes inputs {[i.name for i in graph_inputs]}, "
                             f"not the signature's columns {[f.name for f in features]}")
    inputs = []
    for graph_input, feature in zip(graph_inputs, features):
        numeric = graph_input.type == "tensor(float)"
        if numeric != feature.numeric or (not numeric and graph_input.type != "tensor(string)"):
            raise OnnxModelError(f"{MODEL_FILE} of {where}: input {graph_input.name} is {graph_input.type}, "
                                 f"but the signature says {feature.type}")
        inputs.append((graph_input.name, numeric))
    props = session.get_modelmeta().custom_metadata_map
    try:
        classes = [str(c) for c in json.loads(props[CLASSES_PROP])]
        categories = {k: frozenset(v) for k, v in json.loads(props.get(CATEGORIES_PROP, "{}")).items()}
    except (KeyError, ValueError, TypeError) as exc:
        raise OnnxModelError(f"{MODEL_FILE} of {where} lacks readable {CLASSES_PROP} metadata: {exc}") from exc
    outputs = [o.name for o in session.get_outputs()]
    if "probabilities" not in outputs or not classes:
        raise OnnxModelError(f"{MODEL_FILE} of {where} has outputs {outputs}; a `probabilities` tensor is needed")
    return OnnxModel(session, inputs, classes, categories, "probabilities")
