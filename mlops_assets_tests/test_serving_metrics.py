"""The API's input summary (serving/metrics.py) without Ray running: what each model call
records, through recorders that keep the calls instead of exporting them."""

import pytest

from mlops_assets.serving.metrics import VALUES_OBSERVED_PER_BATCH, ApiMetrics
from mlops_assets.serving.model import Feature

pytestmark = pytest.mark.unit


class Kept:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict]] = []

    def observe(self, value, tags=None) -> None:
        self.calls.append((value, dict(tags or {})))

    inc = observe


@pytest.mark.parametrize("rows", [1, VALUES_OBSERVED_PER_BATCH, VALUES_OBSERVED_PER_BATCH + 1, 100, 1000])
def test_the_value_histogram_gets_a_bounded_even_sample_and_the_counter_every_value(rows):
    metrics = ApiMetrics([Feature("x", "double"), Feature("island", "string")])
    metrics.value, metrics.values, metrics.missing = Kept(), Kept(), Kept()
    values = [float(i) for i in range(rows)]
    metrics.batch({"x": [*values, None], "island": ["Biscoe"] * (rows + 1)}, ["A"] * (rows + 1), "1")
    observed = [v for v, _ in metrics.value.calls]
    assert metrics.values.calls == [(rows, {"feature": "x"})]  # every value counted
    assert metrics.missing.calls == [(1, {"feature": "x"})]
    assert 0 < len(observed) <= VALUES_OBSERVED_PER_BATCH
    assert len(observed) == min(rows, VALUES_OBSERVED_PER_BATCH) or rows > VALUES_OBSERVED_PER_BATCH
    assert observed[0] == 0.0 and observed == sorted(observed)  # evenly spaced through the batch
    if rows > VALUES_OBSERVED_PER_BATCH:
        # An even sample: its mean is close to the batch's (here the values are 0..rows-1).
        assert abs(sum(observed) / len(observed) - sum(values) / rows) <= rows / len(observed)
