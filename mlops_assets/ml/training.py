"""Fit candidate pipelines, score them, and decide whether a new model replaces the champion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .data import Dataset
from .metrics import HIGHER_IS_BETTER, evaluate, is_better
from .models import build_pipeline


def train_candidates(dataset: Dataset, specs: dict[str, dict[str, Any]], seed: int, log=None):
    """Fit one pipeline per family on the train split; score it on the validation split.

    Returns a list of (family, fitted pipeline, params, validation metrics)."""
    x_train, y_train = dataset.xy("train")
    x_val, y_val = dataset.xy("validation")
    trained = []
    for index, (family, params) in enumerate(specs.items(), start=1):
        if log:
            log.info(f"[{index}/{len(specs)}] training {family} with {params}")
        pipeline = build_pipeline(family, dataset.numeric_features, dataset.categorical_features, params, seed)
        pipeline.fit(x_train, y_train)
        trained.append((family, pipeline, params, evaluate(pipeline, x_val, y_val)))
    return trained


def best_by(metric: str, scored: list[tuple[str, dict[str, float]]]) -> str:
    """The name whose `metric` is best; ties go to the first listed."""
    usable = [(name, metrics[metric]) for name, metrics in scored if metric in metrics]
    if not usable:
        raise ValueError(f"no candidate reports {metric!r}; choose a metric every candidate has")
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    return max(usable, key=lambda item: sign * item[1])[0]


def meets_floor(metric: str, score: float, floor: float) -> bool:
    return score >= floor if HIGHER_IS_BETTER[metric] else score <= floor


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(metric: str, candidate: float, champion: float | None, floor: float) -> PromotionDecision:
    if not meets_floor(metric, candidate, floor):
        return PromotionDecision(False, f"candidate {metric}={candidate:.4f} is below the quality floor {floor}")
    if champion is None:
        return PromotionDecision(True, f"no comparable champion; candidate {metric}={candidate:.4f} meets the floor {floor}")
    if is_better(metric, candidate, champion):
        return PromotionDecision(True, f"candidate {metric}={candidate:.4f} beats champion {champion:.4f}")
    return PromotionDecision(False, f"candidate {metric}={candidate:.4f} does not beat champion {champion:.4f}")
