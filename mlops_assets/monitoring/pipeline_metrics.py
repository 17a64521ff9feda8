"""The pipeline's own metrics, pushed to a Pushgateway with prometheus_client.

The assets are batch steps: nothing is left running to be scraped, so each materialization
pushes what it did to a Pushgateway (the Prometheus way for batch jobs) and Prometheus scrapes
the gateway with `honor_labels`. One push per materialization, from one Dagster hook
(`mlops_assets/pipeline_metrics.py`), each with a registry of its own and the grouping key
`{job="mlops-pipeline", asset=<asset>, target=<MLOPS_TARGET>}`:

| metric | labels | pushed by | meaning |
| --- | --- | --- | --- |
| `mlops_pipeline_asset_last_success_timestamp_seconds` | | every asset | when it last materialized (0: never) |
| `mlops_pipeline_asset_last_failure_timestamp_seconds` | | every asset | when it last failed (0: never) |
| `mlops_pipeline_asset_duration_seconds` | | every asset | how long its last successful materialization took |
| `mlops_pipeline_dataset_rows` | | `dataset` | rows of the table |
| `mlops_pipeline_dataset_class_share` | `class` | `dataset` | share of each class in the table |
| `mlops_pipeline_dataset_info` | `data_version` | `dataset` | 1, for the content hash (data version) |
| `mlops_pipeline_candidate_validation_metric` | `family`, `metric` | `candidate_models` | each candidate's validation metrics |
| `mlops_pipeline_training_reused` | | `candidate_models` | 1 when an identical earlier training was reused |
| `mlops_pipeline_retraining_period_seconds` | | `candidate_models` | the retraining schedule's period (MLOPS_RETRAIN_CRON) |
| `mlops_pipeline_champion_test_metric` | `model_name`, `model_version`, `family`, `metric` | `selected_model` | the champion's test metrics |
| `mlops_pipeline_champion_version` | `model_name` | `selected_model` | the champion's registry version |
| `mlops_pipeline_quality_floor` | `metric`, `direction` | `selected_model` | the floor (`min`) or ceiling (`max`, log_loss) of the selection metric |
| `mlops_pipeline_image_size_bytes` | | `container_image` | size of the API image (only when one was built or found) |
| `mlops_pipeline_deploy_duration_seconds` | | `deployed_api` | how long the last successful deployment (or check) took |
| `mlops_pipeline_deployed_model_version` | | `deployed_api` | the version the API serves |
| `mlops_pipeline_rollbacks_total` | | `deployed_api` | rollbacks (a counter: read back from the gateway and carried) |
| `mlops_pipeline_last_rollback_timestamp_seconds` | | `deployed_api` | when the last rollback happened (0: never) |

The Pushgateway itself adds `push_time_seconds` and `push_failure_time_seconds` per group.
Each push is a `pushadd` (POST): it replaces the metrics of the same names in the group and
keeps the others, so a failure keeps the last success's figures. The timestamps and the
rollback counter are read back from the gateway first and carried forward. A push that fails
(gateway down, refused) is reported to the caller and never raised: metrics must never fail
an asset.

No Dagster here (monitoring/ is pure); the dashboard (`pipeline_dashboard.py`) and the alert
rules (`rules.py`) read these names.
"""

from __future__ import annotations

import base64
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

JOB = "mlops-pipeline"  # the `job` label of every pushed series (kept by honor_labels)
PREFIX = "mlops_pipeline_"
LAST_SUCCESS = PREFIX + "asset_last_success_timestamp_seconds"
LAST_FAILURE = PREFIX + "asset_last_failure_timestamp_seconds"
DURATION = PREFIX + "asset_duration_seconds"
DATASET_ROWS = PREFIX + "dataset_rows"
CLASS_SHARE = PREFIX + "dataset_class_share"
DATASET_INFO = PREFIX + "dataset_info"
CANDIDATE_METRIC = PREFIX + "candidate_validation_metric"
TRAINING_REUSED = PREFIX + "training_reused"
RETRAINING_PERIOD = PREFIX + "retraining_period_seconds"
CHAMPION_METRIC = PREFIX + "champion_test_metric"
CHAMPION_VERSION = PREFIX + "champion_version"
QUALITY_FLOOR = PREFIX + "quality_floor"
IMAGE_SIZE = PREFIX + "image_size_bytes"
DEPLOY_DURATION = PREFIX + "deploy_duration_seconds"
DEPLOYED_VERSION = PREFIX + "deployed_model_version"
ROLLBACKS = PREFIX + "rollbacks"  # a Counter: exported as mlops_pipeline_rollbacks_total
ROLLBACKS_TOTAL = ROLLBACKS + "_total"
LAST_ROLLBACK = PREFIX + "last_rollback_timestamp_seconds"

Warn = Callable[[str], None]
Auth = tuple[str, str]  # (user, password): the basic auth of the monitoring host's gateway


@dataclass(frozen=True)
class Champion:
    model_name: str
    version: str
    family: str
    test_metrics: dict[str, float]
    selection_metric: str
    quality_floor: float
    lower_is_better: bool = False  # log_loss: the floor is a ceiling


@dataclass(frozen=True)
class Materialization:
    """One materialization of one asset, as plain values (built by the Dagster hook)."""

    asset: str
    target: str
    succeeded: bool
    at: float  # unix time it ended
    duration_s: float | None = None
    rolled_back: bool = False  # a deployment that failed and was rolled back
    dataset_rows: int | None = None
    class_counts: dict[str, int] | None = None
    data_version: str | None = None
    candidates: dict[str, dict[str, float]] | None = None  # family -> validation metric -> value
    training_reused: bool | None = None
    retraining_period_s: float | None = None
    champion: Champion | None = None
    image_size_bytes: int | None = None
    deployed_model_version: str | None = None

    @property
    def grouping_key(self) -> dict[str, str]:
        return {"asset": self.asset, "target": self.target}


@dataclass
class PushResult:
    pushed: bool
    gateway: str
    message: str
    samples: dict[str, float] = field(default_factory=dict)  # the carried values pushed


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_group(gateway: str, grouping_key: dict[str, str], timeout_s: float = 5.0,
               auth: Auth | None = None) -> dict[str, float]:
    """The samples (name -> value) the gateway holds now for this job and grouping key, read
    from its /metrics with prometheus_client's parser. Raises OSError when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(f"{_url(gateway)}/metrics", headers=_auth_header(auth))
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - our gateway
        text = response.read().decode("utf-8", errors="replace")
    wanted = {"job": JOB, **grouping_key}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in wanted.items()):
                found[sample.name] = sample.value
    return found


def _auth_header(auth: Auth | None) -> dict[str, str]:
    if not auth:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()}


def _url(gateway: str) -> str:
    gateway = gateway.rstrip("/")
    return gateway if gateway.startswith(("http://", "https://")) else f"http://{gateway}"


def carried(run: Materialization, previous: dict[str, float]) -> dict[str, float]:
    """The values that survive pushes, after this materialization: both timestamps (0 means
    never), and for `deployed_api` the rollback counter and the time of the last rollback."""
    values = {
        LAST_SUCCESS: run.at if run.succeeded else previous.get(LAST_SUCCESS, 0.0),
        LAST_FAILURE: previous.get(LAST_FAILURE, 0.0) if run.succeeded else run.at,
    }
    if run.asset == "deployed_api":
        values[ROLLBACKS_TOTAL] = previous.get(ROLLBACKS_TOTAL, 0.0) + (1 if run.rolled_back else 0)
        values[LAST_ROLLBACK] = run.at if run.rolled_back else previous.get(LAST_ROLLBACK, 0.0)
    return values


class _CarriedCounter:
    """A counter whose value is carried from push to push (read back from the gateway): a
    collector of one CounterMetricFamily, so no `_created` sample pretends it began at this push."""

    def __init__(self, name: str, documentation: str, value: float) -> None:
        self.name, self.documentation, self.value = name, documentation, value

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(self.name, self.documentation, value=self.value)


def build_registry(run: Materialization, previous: dict[str, float] | None = None):
    """A new CollectorRegistry holding what this materialization pushes (one per push)."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    values = carried(run, previous or {})

    def gauge(name: str, help_text: str, value: float, **labels: str) -> None:
        metric = Gauge(name, help_text, list(labels), registry=registry) if name not in gauges else gauges[name]
        gauges[name] = metric
        (metric.labels(**labels) if labels else metric).set(value)

    gauges: dict = {}
    gauge(LAST_SUCCESS, "Unix time the asset last materialized (0: never).", values[LAST_SUCCESS])
    gauge(LAST_FAILURE, "Unix time the asset last failed (0: never).", values[LAST_FAILURE])
    if run.succeeded and run.duration_s is not None:
        gauge(DURATION, "Seconds the asset's last successful materialization took.", run.duration_s)
    if run.asset == "deployed_api":
        registry.register(_CarriedCounter(ROLLBACKS, "Deployments that failed and were rolled back.", values[ROLLBACKS_TOTAL]))
        gauge(LAST_ROLLBACK, "Unix time of the last rollback (0: never).", values[LAST_ROLLBACK])
    if not run.succeeded:
        return registry
    if run.dataset_rows is not None:
        gauge(DATASET_ROWS, "Rows of the dataset table.", run.dataset_rows)
    if run.class_counts:
        total = sum(run.class_counts.values()) or 1
        for label, count in sorted(run.class_counts.items()):
            gauge(CLASS_SHARE, "Share of each class in the dataset.", count / total, **{"class": label})
    if run.data_version:
        gauge(DATASET_INFO, "1 for the dataset's data version (content hash).", 1, data_version=run.data_version)
    for family, metrics in sorted((run.candidates or {}).items()):
        for metric, value in sorted(metrics.items()):
            gauge(CANDIDATE_METRIC, "Validation metrics of each candidate model.", value, family=family, metric=metric)
    if run.training_reused is not None:
        gauge(TRAINING_REUSED, "1 when an identical earlier training was reused.", int(run.training_reused))
    if run.retraining_period_s is not None:
        gauge(RETRAINING_PERIOD, "The retraining schedule's period in seconds.", run.retraining_period_s)
    if run.champion is not None:
        champion = run.champion
        for metric, value in sorted(champion.test_metrics.items()):
            gauge(CHAMPION_METRIC, "The champion's test metrics.", value, model_name=champion.model_name,
                  model_version=champion.version, family=champion.family, metric=metric)
        if champion.version.isdigit():
            gauge(CHAMPION_VERSION, "The champion's registry version.", int(champion.version), model_name=champion.model_name)
        gauge(QUALITY_FLOOR, "The quality floor of the selection metric (direction max: a ceiling).", champion.quality_floor,
              metric=champion.selection_metric, direction="max" if champion.lower_is_better else "min")
    if run.image_size_bytes:
        gauge(IMAGE_SIZE, "Size of the API image in bytes.", run.image_size_bytes)
    if run.asset == "deployed_api" and run.duration_s is not None:
        gauge(DEPLOY_DURATION, "Seconds the last successful deployment (or its check) took.", run.duration_s)
    if run.deployed_model_version and run.deployed_model_version.isdigit():
        gauge(DEPLOYED_VERSION, "The model version the API serves.", int(run.deployed_model_version))
    return registry


def push(gateway: str, run: Materialization, warn: Warn, timeout_s: float = 5.0, auth: Auth | None = None) -> PushResult:
    """Read the group back, then pushadd this materialization's registry (with basic auth when
    `auth` is given). Never raises: a gateway that is down or refuses the push is a warning
    (`warn`) and `pushed=False`."""
    from prometheus_client import pushadd_to_gateway
    from prometheus_client.exposition import basic_auth_handler, default_handler

    def handler(url, method, timeout, headers, data):
        if auth:
            return basic_auth_handler(url, method, timeout, headers, data, *auth)
        return default_handler(url, method, timeout, headers, data)

    url = _url(gateway)
    try:
        previous = read_group(url, run.grouping_key, timeout_s, auth)
        registry = build_registry(run, previous)
        pushadd_to_gateway(url, job=JOB, registry=registry, grouping_key=run.grouping_key, timeout=timeout_s,
                           handler=handler)
    except Exception as exc:  # noqa: BLE001 - metrics must never fail an asset, whatever went wrong
        message = (f"pipeline metrics of {run.asset} not pushed to the Pushgateway at {url}: "
                   f"{type(exc).__name__}: {exc} (the asset is not affected)")
        warn(message)
        return PushResult(False, url, message)
    return PushResult(True, url, f"pipeline metrics of {run.asset} pushed to {url}", carried(run, previous))
