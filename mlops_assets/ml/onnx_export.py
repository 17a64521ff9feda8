"""A fitted pipeline as ONNX (skl2onnx), and its parity with the scikit-learn pipeline.

`convert` runs when a candidate is logged (its `model.onnx` joins the model folder before the
sha256 manifest is computed); `parity` runs in `selected_model` on the test split and the
validation sample, through the two serving engines themselves (serving/model.py), and decides
which engine serves the version.

One trap: skl2onnx converts a string SimpleImputer only when its missing marker is a string.
The conversion works on a copy whose categorical imputers mark gaps with
onnx_engine.MISSING_MARKER; the engine feeds a NaN there, as scikit-learn would impute a NaN.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from mlops_assets.serving import onnx_engine

# Largest absolute difference of any class probability between the engines.
PROBABILITY_TOLERANCE = 1e-4
# Rows that differ are listed up to this many in tags and metadata.
MAX_LISTED_ROWS = 10
# Registered-version tags of a parity check (Parity.tags(); ml_phase reads them back).
PARITY_TAG = "mlops.onnx_parity"
DIFFERENCE_TAG = "mlops.onnx_parity_max_probability_difference"


class ConversionError(ValueError):
    """skl2onnx cannot convert this pipeline."""


def _string_imputers(pipeline):
    """The SimpleImputers of the pipeline's ColumnTransformer that fill strings."""
    from sklearn.impute import SimpleImputer

    steps = getattr(pipeline, "steps", [("", pipeline)])
    for _, step in steps:
        for _, transformer, _ in getattr(step, "transformers_", []):
            parts = [s for _, s in transformer.steps] if hasattr(transformer, "steps") else [transformer]
            for part in parts:
                if isinstance(part, SimpleImputer) and isinstance(part.fill_value, str):
                    yield part


def convert(pipeline, features: list, categories: dict[str, frozenset[str]]) -> bytes:
    """The whole fitted pipeline (preprocessing and model) as ONNX bytes: one input per feature
    ([N, 1], float for numeric, string for categorical), outputs `label` and `probabilities`
    (no ZipMap), the class order and the training categories in its metadata."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType

        copied = copy.deepcopy(pipeline)
        for imputer in _string_imputers(copied):
            imputer.missing_values = onnx_engine.MISSING_MARKER
        initial_types = [(f.name, FloatTensorType([None, 1]) if f.numeric else StringTensorType([None, 1])) for f in features]
        final = copied.steps[-1][1] if hasattr(copied, "steps") else copied
        model = convert_sklearn(copied, initial_types=initial_types, options={id(final): {"zipmap": False}})
    except Exception as exc:
        raise ConversionError(f"skl2onnx cannot convert this pipeline: {type(exc).__name__}: {str(exc)[:500]}") from exc
    classes = [str(c) for c in getattr(pipeline, "classes_", [])]
    props = {
        onnx_engine.CLASSES_PROP: json.dumps(classes),
        onnx_engine.CATEGORIES_PROP: json.dumps({k: sorted(v) for k, v in categories.items()}),
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


@dataclass(frozen=True)
class Parity:
    """How the ONNX engine's answers compare with the scikit-learn pipeline's on the same rows."""

    rows: int
    max_probability_difference: float
    differing_rows: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_LISTED_ROWS
    differing_count: int = 0
    tolerance: float = PROBABILITY_TOLERANCE

    @property
    def ok(self) -> bool:
        return self.rows > 0 and self.differing_count == 0 and self.max_probability_difference <= self.tolerance

    def describe(self) -> str:
        text = (f"{self.rows} rows: {'same class on every row' if not self.differing_count else f'{self.differing_count} rows predict another class'}, "
                f"largest probability difference {self.max_probability_difference:.2e} (tolerance {self.tolerance:.0e})")
        if self.differing_rows:
            text += "; " + "; ".join(
                f"row {r['row']}: scikit-learn {r['sklearn']} vs ONNX {r['onnx']} (scikit-learn's top-two margin "
                f"{r['margin']:.2e}{', within float32 rounding of a tie or threshold' if r['margin'] < 1e-4 else ''})"
                for r in self.differing_rows)
        return text

    def tags(self) -> dict[str, str]:
        return {"mlops.onnx_parity_rows": str(self.rows), "mlops.onnx_parity_differing_rows": str(self.differing_count),
                DIFFERENCE_TAG: f"{self.max_probability_difference:.3e}",
                PARITY_TAG: self.describe()[:4900]}


def parity(sklearn_model, onnx_model, columns: dict[str, list],
           tolerance: float = PROBABILITY_TOLERANCE) -> Parity:
    """Compare two loaded models (serving/model.py LoadedModel, one per engine) on the same
    request columns, through the functions that serve requests."""
    import numpy as np

    from mlops_assets.serving import model as model_lib

    sk_labels, sk_proba = model_lib.predict_columns(sklearn_model, columns)
    ox_labels, ox_proba = model_lib.predict_columns(onnx_model, columns)
    sk = np.array(sk_proba, dtype=float)
    ox = np.array(ox_proba, dtype=float)
    rows = len(sk_labels)
    if sk.shape != ox.shape or list(sklearn_model.classes) != list(onnx_model.classes):
        return Parity(rows, float("inf"), [{"row": -1, "sklearn": f"{sklearn_model.classes}", "onnx": f"{onnx_model.classes}",
                                            "margin": 0.0}], rows, tolerance)
    difference = np.abs(sk - ox)
    largest = float(np.nanmax(difference)) if difference.size else 0.0
    if np.isnan(difference).any():
        largest = float("inf")
    differing = [i for i in range(rows) if sk_labels[i] != ox_labels[i]]
    listed = []
    for i in differing[:MAX_LISTED_ROWS]:
        top = np.sort(sk[i])[-2:]
        listed.append({"row": i, "sklearn": sk_labels[i], "onnx": ox_labels[i], "margin": float(top[-1] - top[0])})
    return Parity(rows, largest, listed, len(differing), tolerance)
