"""The application's own metrics, recorded with `ray.serve.metrics`.

Ray's metrics agent aggregates every replica and exports the series, prefixed `ray_`, beside
Ray's own `ray_serve_*` series on the node's metrics export port (docs/architecture.md, Metrics). A
prometheus_client registry inside a replica would answer differently per replica: not used.

Recording is cheap but not free (a few microseconds per call), so per-feature input summaries
are recorded once per predicted batch, not once per row, and the value histogram of a numeric
feature is fed at most VALUES_OBSERVED_PER_BATCH values of each batch, evenly spaced through
it (all of them for smaller batches): one observation per value cost 1.2 ms per 100-row batch,
more than the ONNX model call. Its mean (`_sum / _count`) and quantiles are those of an
unbiased sample of the traffic; `mlops_api_feature_values_total` still counts every value.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from .model import Feature

LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]
# 1-2-5 steps over eight decades: one boundary set that fits features of any scale
# (Ray's histogram boundaries are positive; negative values fall in the first bucket).
FEATURE_VALUE_BUCKETS = [m * 10.0**e for e in range(-2, 6) for m in (1, 2, 5)]
BATCH_ROWS_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
# For a model without encoders to read the categories from: per feature, at most this many
# distinct values get their own series per replica;
# the rest are counted as "__other__" so that a client cannot blow up the series count.
MAX_CATEGORIES_PER_FEATURE = 50
# Ray exports a gauge's value only when it was set since the last export (every
# RAY_metrics_report_interval_ms, at least 1 s) and its agent drops a series not exported within
# two intervals. The model-info gauge is set again this often, below the shortest interval, so
# that every export carries it: with a heartbeat every 2 s (the health checks) and 1 s intervals,
# the series was missing from some scrapes (CI, stop 33).
MODEL_INFO_HEARTBEAT_S = 0.5
VALUES_OBSERVED_PER_BATCH = 16
OTHER_CATEGORY = "__other__"
UNKNOWN_CATEGORY = "__unknown__"  # not a category the model was trained on

# name (as exported, after Ray's `ray_` prefix) -> meaning; the metric table of docs/architecture.md.
METRICS = {
    "ray_mlops_api_requests_total": "HTTP requests answered by the API, by route and status code",
    "ray_mlops_api_request_latency_seconds": "Time from request received to response sent, by route (histogram)",
    "ray_mlops_api_predictions_total": "Rows predicted, by model version and predicted class",
    "ray_mlops_api_batch_rows": "Rows per model call after request batching (histogram)",
    "ray_mlops_api_feature_values_total": "Non-missing values received per numeric feature",
    "ray_mlops_api_feature_value": "Distribution of the values received per numeric feature (histogram of at most "
    "16 evenly spaced values per model call; _sum/_count is the mean, histogram_quantile the quantiles to compare "
    "with training data)",
    "ray_mlops_api_feature_missing_total": "Missing (null) values received per feature",
    "ray_mlops_api_feature_category_total": "Values received per categorical feature and category",
    "ray_mlops_api_model_info": "1 per replica for the model name and version it serves (0 for one it just stopped serving), "
    "with the engine that runs it (onnx or sklearn) and, for sklearn, why not ONNX (engine_reason, short)",
}


class ApiMetrics:
    def __init__(self, features: list[Feature]) -> None:
        # Imported here, not at the top: the constants above are read by the pipeline's
        # `dashboards` asset, whose process has no use for Ray (importing it costs ~0.8 s).
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.features = features
        self.requests = Counter(
            "mlops_api_requests_total", description=METRICS["ray_mlops_api_requests_total"], tag_keys=("route", "status")
        )
        self.latency = Histogram(
            "mlops_api_request_latency_seconds",
            description=METRICS["ray_mlops_api_request_latency_seconds"],
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("route",),
        )
        self.predictions = Counter(
            "mlops_api_predictions_total",
            description=METRICS["ray_mlops_api_predictions_total"],
            tag_keys=("model_version", "predicted_class"),
        )
        self.batch_rows = Histogram(
            "mlops_api_batch_rows", description=METRICS["ray_mlops_api_batch_rows"], boundaries=BATCH_ROWS_BUCKETS
        )
        self.values = Counter(
            "mlops_api_feature_values_total", description=METRICS["ray_mlops_api_feature_values_total"], tag_keys=("feature",)
        )
        self.value = Histogram(
            "mlops_api_feature_value",
            description=METRICS["ray_mlops_api_feature_value"],
            boundaries=FEATURE_VALUE_BUCKETS,
            tag_keys=("feature",),
        )
        self.missing = Counter(
            "mlops_api_feature_missing_total", description=METRICS["ray_mlops_api_feature_missing_total"], tag_keys=("feature",)
        )
        self.categories = Counter(
            "mlops_api_feature_category_total",
            description=METRICS["ray_mlops_api_feature_category_total"],
            tag_keys=("feature", "category"),
        )
        self.model_info = Gauge(
            "mlops_api_model_info", description=METRICS["ray_mlops_api_model_info"],
            tag_keys=("model_name", "model_version", "engine", "engine_reason"),
        )
        self._seen_categories: dict[str, set[str]] = defaultdict(set)
        self._serving: dict[str, str] | None = None
        self._serving_lock = threading.Lock()
        self._heartbeats: threading.Thread | None = None

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(1, {"route": route, "status": str(status)})
        self.latency.observe(seconds, {"route": route})

    def serving(self, name: str, version: str, previous: tuple[str, str] | None, engine: str = "sklearn",
                reason: str = "") -> None:
        tags = {"model_name": name, "model_version": version, "engine": engine, "engine_reason": engine_label(reason)}
        with self._serving_lock:
            if self._serving and self._serving != tags:
                self.model_info.set(0, self._serving)
            self._serving = tags
        self.heartbeat()
        if self._heartbeats is None:
            self._heartbeats = threading.Thread(target=self._beat, name="model-info-heartbeat", daemon=True)
            self._heartbeats.start()

    def heartbeat(self) -> None:
        """Ray drops a gauge series not set again within its TTL: re-set it (MODEL_INFO_HEARTBEAT_S)."""
        with self._serving_lock:
            if self._serving:
                self.model_info.set(1, self._serving)

    def _beat(self) -> None:
        while True:
            time.sleep(MODEL_INFO_HEARTBEAT_S)
            self.heartbeat()

    def batch(
        self, columns: dict[str, list], labels: list[str], version: str, known: dict[str, frozenset[str]] | None = None
    ) -> None:
        """Input summary and predicted classes of one model call."""
        self.batch_rows.observe(len(labels))
        counts: dict[str, int] = defaultdict(int)
        for label in labels:
            counts[label] += 1
        for label, count in counts.items():
            self.predictions.inc(count, {"model_version": version, "predicted_class": label})
        for feature in self.features:
            values = columns[feature.name]
            tags = {"feature": feature.name}
            if feature.numeric:
                present = [v for v in values if v is not None]
                missing = len(values) - len(present)
                if present:
                    self.values.inc(len(present), tags)
                    observe = self.value.observe
                    step = -(-len(present) // VALUES_OBSERVED_PER_BATCH)  # ceil: at most that many values
                    for value in present[::step]:
                        observe(value, tags)
            else:
                # Counted per raw value first, then each distinct value labelled once (first
                # seen first, so the cap on unknown categories keeps the same ones).
                per_value: dict[Any, int] = defaultdict(int)
                for value in values:
                    per_value[value] += 1
                missing = per_value.pop(None, 0)
                per_category: dict[str, int] = defaultdict(int)
                for value, count in per_value.items():
                    per_category[self._category(feature.name, str(value), (known or {}).get(feature.name))] += count
                for category, count in per_category.items():
                    self.categories.inc(count, {"feature": feature.name, "category": category})
            if missing:
                self.missing.inc(missing, tags)

    def _category(self, feature: str, value: str, known: frozenset[str] | None) -> str:
        # Label values must be ASCII for Ray's exporter, and bounded in number.
        if known:
            return _ascii(value) if value in known else UNKNOWN_CATEGORY
        value = _ascii(value)[:64]
        seen = self._seen_categories[feature]
        if value in seen:
            return value
        if len(seen) < MAX_CATEGORIES_PER_FEATURE:
            seen.add(value)
            return value
        return OTHER_CATEGORY


def engine_label(reason: str) -> str:
    """A bounded label value for why scikit-learn serves: the reason's first clause (the whole
    text is in /readyz and the registry's tags)."""
    if not reason:
        return ""
    return _ascii(reason.split(":")[0].split(";")[0].strip())[:80]


def _ascii(value: str) -> str:
    return value.encode("ascii", "backslashreplace").decode("ascii")
