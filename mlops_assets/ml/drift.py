"""Drift measures between what the API served and what the model was trained on."""

from __future__ import annotations

import math


def total_variation(observed: dict[str, float], reference: dict[str, float]) -> float:
    """Total variation distance between two class distributions given as counts (0 = same,
    1 = disjoint). Classes missing on one side count as zero there."""
    observed_total, reference_total = sum(observed.values()), sum(reference.values())
    if observed_total <= 0 or reference_total <= 0:
        raise ValueError("both distributions need at least one count")
    classes = set(observed) | set(reference)
    return 0.5 * sum(abs(observed.get(c, 0) / observed_total - reference.get(c, 0) / reference_total) for c in classes)


def mean_shift(served_mean: float, train_mean: float, train_std: float) -> float:
    """How many training standard deviations the served mean moved (0 when the feature is
    constant in training and unchanged)."""
    if train_std <= 0 or math.isnan(train_std):
        return 0.0 if served_mean == train_mean else math.inf
    return abs(served_mean - train_mean) / train_std
