"""What the model was trained on, as numbers the rules compare live traffic with: the class
distribution of the training split and the mean and standard deviation of each numeric
feature. Rendered into recording rules (rules.py), so Prometheus holds the reference."""

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


def training_profile(dataset) -> TrainingProfile:
    """From the `dataset` asset's value (mlops_assets.ml.data.Dataset): its training split."""
    import polars as pl

    train = dataset.train
    counts = train.get_column(dataset.target).cast(pl.String).value_counts()
    class_counts = {str(label): int(count) for label, count in counts.iter_rows()}
    means, stddevs = {}, {}
    for name in dataset.numeric_features:
        column = train.get_column(name).drop_nulls().drop_nans()
        if column.len() < 2:
            continue
        mean, std = float(column.mean()), float(column.std())
        if math.isfinite(mean) and math.isfinite(std) and std > 0:
            means[name], stddevs[name] = mean, std
    return TrainingProfile(class_counts=class_counts, feature_means=means, feature_stddevs=stddevs)
