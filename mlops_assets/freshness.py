"""When is an asset out of date: one definition, for `make run` and for the automation sensor.

An asset **needs a rebuild** when Dagster calls it stale or missing (its code version changed,
or an input has a new data version since it was materialized: the "stale" badge of the UI)
and none of its ancestors does: an asset waits until what feeds it is current, so new data
never deploys a new model with the old image.

That predicate is `NeedsRebuild`, an automation condition. Every asset carries
`rebuild_condition()` (it, once per change, never while a run is in progress), and both
consumers evaluate those very conditions through Dagster's public evaluator:

- the automation sensor (`dagster dev`, Automation tab), tick by tick;
- `make run` (rebuild.py), wave by wave: each wave asks `requested()` what the conditions
  request now, materializes it, and asks again until nothing is requested.

So the two agree by construction. The assets tagged `LIVE_SERVICE_TAG` look after a running
service (the image in the engine, the API, Prometheus): fresh data says nothing about whether
the process is up, so `make run` also materializes them in a last wave; they return early when
everything is in place (the rules are in `SKIP_RULES`, shown in docs/operations.md).

Dagster has no public API for its staleness status (the UI's resolver is `dagster._core`), nor
for the data-version tag of an observation, nor for the ticks of a cron schedule (how old a
retraining may get: `schedule_period_s`): they are imported here and nowhere else, and
`test_freshness.py` fails loudly if an upgrade changes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

# -- Dagster's private names, in this module only --------------------------------------------
from dagster._core.definitions.data_version import (  # noqa: E402
    DATA_VERSION_TAG as _DATA_VERSION_TAG,
    CachingStaleStatusResolver as _StaleResolver,
    StaleStatus as _StaleStatus,
)
from dagster._core.loader import LoadingContextForTest as _LoadingContext  # noqa: E402

# The tag that carries an observation's data version (what an observable source reports).
DATA_VERSION_TAG: str = _DATA_VERSION_TAG

LABEL = "rebuild when stale or missing"  # the label of rebuild_condition()

# Assets that look after a live service: `make run` materializes them even when fresh.
LIVE_SERVICE_TAG = "mlops/live_service"


def stale_or_missing(instance: dg.DagsterInstance, graph, keys=None) -> set[dg.AssetKey]:
    """The keys (default: every materializable asset) that Dagster shows as stale or missing."""
    resolver = _StaleResolver(instance, graph, _LoadingContext(instance))
    keys = graph.materializable_asset_keys if keys is None else keys
    return {key for key in keys if resolver.get_status(key) in (_StaleStatus.STALE, _StaleStatus.MISSING)}


def ready_to_rebuild(out_of_date: set, ancestors, rebuilt: set | None = None) -> set:
    """The out-of-date keys that can be rebuilt now, `ancestors(key)` giving a key's ancestors
    and `rebuilt` the keys that carry this rebuild rule (default: all).

    A key waits while an out-of-date ancestor can reach it only through an asset that is
    current now but will change once that ancestor is rebuilt (new data makes `dataset` and
    `deployed_api` stale at once; `deployed_api` must wait for the new model and its image,
    not redeploy the old ones). Out-of-date ancestors whose whole path to the key is out of
    date too are rebuilt in the same run, upstream first (a cold start is one run).
    An out-of-date ancestor that nothing rebuilds (no such rule) blocks its descendants.
    Pure: the decision `NeedsRebuild` makes, testable without Dagster."""
    candidates = out_of_date if rebuilt is None else out_of_date & rebuilt
    ready = set()
    for key in candidates:
        upstream = ancestors(key)
        if upstream & (out_of_date - candidates):
            continue
        between = upstream - out_of_date
        if not any(ancestors(middle) & out_of_date for middle in between):
            ready.add(key)
    return ready


class NeedsRebuild(dg.AutomationCondition):
    """Stale or missing, with no stale or missing ancestor (see the module docstring)."""

    @property
    def name(self) -> str:
        return "needs_rebuild"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        ready = _ready_in(context.asset_graph_view)
        return dg.AutomationResult(context, context.candidate_subset if context.key in ready else context.get_empty_subset())


_last: tuple[object, set] | None = None  # (the evaluation's graph view, its ready keys)


def _ready_in(view) -> set:
    """The ready keys of one evaluation (every asset's condition asks: computed once per view)."""
    global _last
    if _last is None or _last[0] is not view:
        graph = view.asset_graph
        out_of_date = stale_or_missing(view.instance, graph)
        carriers = {key for key in graph.materializable_asset_keys
                    if (condition := graph.get(key).automation_condition) is not None and condition.get_label() == LABEL}
        _last = (view, ready_to_rebuild(out_of_date, lambda key: _ancestors(graph, key), carriers))
    return _last[1]


def rebuild_condition() -> dg.AutomationCondition:
    """Every asset's automation condition: requested when it newly needs a rebuild (once per
    change: a failed run is not retried every tick), never while it or an input is running."""
    return (
        NeedsRebuild().newly_true()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.any_deps_in_progress()
    ).with_label(LABEL)


def requested(defs: dg.Definitions, instance: dg.DagsterInstance, keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
    """What the assets' automation conditions request right now, among `keys` (a first tick:
    no cursor, so "newly" is "now")."""
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    return {key for key in keys if result.get_num_requested(key)}


def _ancestors(graph, key: dg.AssetKey) -> set[dg.AssetKey]:
    seen: set[dg.AssetKey] = set()
    stack = list(graph.get(key).parent_keys)
    while stack:
        parent = stack.pop()
        if parent in seen:
            continue
        seen.add(parent)
        stack.extend(graph.get(parent).parent_keys)
    return {k for k in seen if graph.get(k).is_materializable}


# -- when each asset returns early, and on what evidence -------------------------------------
@dataclass(frozen=True)
class SkipRule:
    asset: str
    returns_early_when: str
    evidence: str


SKIP_RULES: tuple[SkipRule, ...] = (
    SkipRule("dataset", "never: Dagster does not run it unless dataset_source has a new hash (or its code changed)",
             "the data version of `dataset_source` (sha256 of the file and the target name)"),
    SkipRule("tracking_server", "never: Dagster does not run it unless tofu_state has a new data version, the store's "
             "address changed or its code did; it then reaches the store once (seconds)",
             "the data version of `tofu_state` and the store's address (MLFLOW_TRACKING_URI, no password)"),
    SkipRule("candidate_models", "a finished training with the same fingerprint exists: its runs are reused, and the "
             "Dagster run's own MLflow run only names it (tag `mlops.reused_run_id`)",
             "MLflow: a parent run tagged with the fingerprint (data hash, hyperparameters, seed, training code)"),
    SkipRule("selected_model", "the best candidate is already registered from that run: its recorded test metrics are reused",
             "MLflow: a model version of that run with test metrics tagged for this dataset hash"),
    SkipRule("container_image", "the engine has the image of this recipe: nothing downloaded or built",
             "record `image_recipes` and the engine's image list"),
    SkipRule("tofu_state", "`plan -detailed-exitcode` finds no change: nothing applied",
             "OpenTofu's plan against its state (`local`: nothing to provision)"),
    SkipRule("deployed_hosts", "Ansible reports changed=0: the data version is kept",
             "Ansible's recap, and the previous materialization's data version"),
    SkipRule("deployed_api", "the API answers ready with the champion's version and the same settings: nothing applied",
             "record `deployed` (local) or `api_deployed` (hosts), checked live with /readyz and a smoke prediction"),
    SkipRule("dashboards", "the rendered files equal those that passed promtool, and the Prometheus in service has "
             "every rule loaded and every target up (a target scraped but down, such as an API container deployed_api "
             "just restarted, gets one scrape interval plus 10 s to come up first): promtool and Ansible not run",
             "record `promtool_passed`, the previous materialization's content hash, Prometheus's API"),
)


def skip_rules_markdown() -> str:
    rows = ["| asset | returns early when | evidence |", "| --- | --- | --- |"]
    rows += [f"| `{r.asset}` | {r.returns_early_when} | {r.evidence} |" for r in SKIP_RULES]
    return "\n".join(rows)


def schedule_period_s(cron: str, timezone: str = "UTC", fires: int = 30) -> float:
    """The retraining schedule's period: the longest gap between its next `fires` ticks (for
    `0 3 * * 1-5` the weekend's). What the stale-retraining alert compares with, pushed by
    `candidate_models` (monitoring/pipeline_metrics.py). Dagster's own cron iterator (the one
    its scheduler uses; no croniter here)."""
    import time

    from dagster._utils.schedules import cron_string_iterator

    ticks = cron_string_iterator(time.time(), cron, timezone)
    times = [next(ticks) for _ in range(fires)]
    return max((b - a).total_seconds() for a, b in zip(times, times[1:]))
