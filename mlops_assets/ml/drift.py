"""Drift measures between what the API served and what the model was trained on."""

from __future__ import annotations


def total_variation(observed: dict[str, float], reference: dict[str, float]) -> float:
    """Total variation distance between two class distributions given as counts (0 = same,
    1 = disjoint). Classes missing on one side count as zero there."""
    observed_total, reference_total = sum(observed.values()), sum(reference.values())
    if observed_total <= 0 or reference_total <= 0:
        raise ValueError("both distributions need at least one count")
    classes = set(observed) | set(reference)
    return 0.5 * sum(abs(observed.get(c, 0) / observed_total - reference.get(c, 0) / reference_total) for c in classes)
