"""What the model was trained on, as numbers the rules compare live traffic with: the class
distribution of the training split and the mean and standard deviation of each numeric
feature. Rendered into recording rules (rules.py), so Prometheus holds the reference.

The feature statistics are taken the way Prometheus will see the live values: Ray 2.60's
metrics agent rebuilds each histogram from its bucket counts and records every observation at
its bucket's midpoint, so the exported `_sum` is a sum of midpoints (measured: flipper
lengths of ~200 mm came out with a mean of ~247). Binning the training values through the same
buckets and midpoints makes the live/training comparison like for like."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainingProfile:
    class_counts: dict[str, int]
    feature_means: dict[str, float] = field(default_factory=dict)
    feature_stddevs: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.class_counts or sum(self.class_counts.values()) <= 0:
            raise ValueError("a training profile needs the class counts of a non-empty training split")

    @property
    def class_ratios(self) -> dict[str, float]:
        total = sum(self.class_counts.values())
        return {label: count / total for label, count in sorted(self.class_counts.items())}


def ray_bucket_midpoints(boundaries: list[float]) -> list[float]:
    """The value Ray's metrics agent records for each bucket (ray/_private/telemetry/
    open_telemetry_metric_recorder.py): the middle of (previous, boundary], twice the last
    boundary for the overflow bucket."""
    first_lower = 0.0 if boundaries[0] > 0 else boundaries[0] * 2.0
    middles = [(first_lower + boundaries[0]) / 2.0]
    middles += [(boundaries[i] + boundaries[i - 1]) / 2.0 for i in range(1, len(boundaries))]
    return middles + [1.0 if boundaries[-1] <= 0 else boundaries[-1] * 2.0]


def as_exported(values, boundaries: list[float]):
    """Each value replaced by the midpoint Ray exports for its bucket (le semantics)."""
    import numpy as np

    index = np.searchsorted(np.asarray(boundaries, dtype=float), np.asarray(values, dtype=float), side="left")
    return np.asarray(ray_bucket_midpoints(boundaries))[index]


def training_profile(dataset, boundaries: list[float] | None = None) -> TrainingProfile:
    """From the `dataset` asset's value (mlops_assets.ml.data.Dataset): its training split,
    numeric features binned through the API's histogram boundaries."""
    import polars as pl

    if boundaries is None:
        from mlops_assets.serving.metrics import FEATURE_VALUE_BUCKETS

        boundaries = FEATURE_VALUE_BUCKETS
    train = dataset.train
    counts = train.get_column(dataset.target).cast(pl.String).value_counts()
    class_counts = {str(label): int(count) for label, count in counts.iter_rows()}
    means, stddevs = {}, {}
    for name in dataset.numeric_features:
        column = train.get_column(name).drop_nulls().drop_nans()
        if column.len() < 2:
            continue
        binned = as_exported(column.to_numpy(), boundaries)
        mean, std = float(binned.mean()), float(binned.std(ddof=1))
        if math.isfinite(mean) and math.isfinite(std) and std > 0:
            means[name], stddevs[name] = mean, std
    return TrainingProfile(class_counts=class_counts, feature_means=means, feature_stddevs=stddevs)
