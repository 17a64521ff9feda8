"""Request and response models built from the model's signature: what /openapi.json shows and
what every request is checked against before it reaches the model.

Decisions (docs/architecture.md, the prediction API):
- every feature key must be present in every instance; unknown keys are refused;
- JSON `null` is accepted for any feature and means "missing": the pipeline imputes it, as it
  did for the missing values of the training data;
- numbers must be JSON numbers (no strings, no booleans) and finite: the `NaN` and `Infinity`
  literals some encoders write are refused;
- strings must be JSON strings (a number for a string feature is refused, not converted).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from .model import Feature

DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


def _field_type(feature: Feature):
    if feature.numeric:
        return Annotated[
            float | None,
            Field(strict=True, allow_inf_nan=False, description=f"{feature.type}; null = missing (imputed)"),
        ]
    if feature.type == "boolean":
        return Annotated[bool | None, Field(strict=True, description="boolean; null = missing (imputed)")]
    return Annotated[str | None, Field(strict=True, description="string; null = missing (imputed)")]


def instance_model(features: list[Feature]) -> type[BaseModel]:
    fields: dict[str, Any] = {f.name: (_field_type(f), ...) for f in features}
    return create_model("Instance", __config__=ConfigDict(extra="forbid"), **fields)


def request_model(features: list[Feature], max_rows: int = DEFAULT_MAX_ROWS) -> type[BaseModel]:
    instance = instance_model(features)
    example = {f.name: (1.0 if f.numeric else ("true" if f.type == "boolean" else "a")) for f in features}
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [{"instances": [example]}]}),
        instances=(
            Annotated[list[instance], Field(min_length=1, max_length=max_rows, description=f"1 to {max_rows} rows")],
            ...,
        ),
    )


class ModelRef(BaseModel):
    name: str
    version: str


class PredictResponse(BaseModel):
    predictions: list[str] = Field(description="Predicted class per instance, in request order")
    probabilities: list[dict[str, float]] | None = Field(
        default=None, description="Per instance, the probability of each class (models with predict_proba)"
    )
    model: ModelRef


class RejectedModel(BaseModel):
    model_uri: str
    version: str | None = None
    error: str


class ReadyResponse(BaseModel):
    status: str
    model: ModelRef
    engine: str = Field(default="sklearn", description="What runs the model: `onnx` (ONNX Runtime) or `sklearn`")
    engine_reason: str | None = Field(
        default=None, description="Why the scikit-learn pipeline serves instead of ONNX Runtime (parity missed, "
        "conversion failed, ...)")
    rejected: RejectedModel | None = Field(
        default=None,
        description="The last model this replica was asked to swap in and could not load: it kept serving `model`",
    )


class ErrorDetail(BaseModel):
    field: str = Field(description="Where the problem is, e.g. instances[0].bill_length_mm")
    message: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorDetail] | str


def field_path(loc: tuple | list) -> str:
    """('body', 'instances', 0, 'x') -> 'instances[0].x'."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def error_details(errors: list[dict[str, Any]], limit: int = 20) -> list[dict[str, str]]:
    details = []
    for error in errors[:limit]:
        message = error.get("msg", "invalid")
        kind = error.get("type", "")
        field = "body" if kind == "json_invalid" else field_path(error.get("loc", ()))
        in_instance = field.startswith("instances[")
        if kind == "extra_forbidden":
            message = "unknown feature: not in the model's signature" if in_instance else "unknown field"
        elif kind == "missing":
            message = (
                "missing: every instance needs every feature (use null for a missing value)"
                if in_instance
                else "missing: the body is {\"instances\": [...]}"
            )
        elif kind == "json_invalid":
            message = f"invalid JSON: {error.get('ctx', {}).get('error', message)}"
        details.append({"field": field, "message": message, "type": kind})
    return details
