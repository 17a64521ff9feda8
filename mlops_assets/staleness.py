"""Which assets Dagster considers out of date: what `make run` materializes.

Dagster's CLI cannot select `status:stale` (NotImplementedError in 1.13), and only
schedules and sensors get `stale_assets_only`; this module gives `make run` the same answer
the UI shows, through the resolver the UI and the sensor daemon use."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

# Assets that look after a live service (a server process, a container) run on every
# `make run` even when fresh: their data can be current while the service is down.
ALWAYS_CHECK_TAG = "mlops/always_check"


def stale_or_missing(defs: dg.Definitions, instance: dg.DagsterInstance, keys=None) -> set[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    # LoadingContextForTest is the plain instance-backed loading context (despite its name).
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    keys = graph.materializable_asset_keys if keys is None else keys
    return {key for key in keys if resolver.get_status(key) in (StaleStatus.STALE, StaleStatus.MISSING)}


def keys_to_run(defs: dg.Definitions, instance: dg.DagsterInstance, job_keys: set[dg.AssetKey]) -> set[dg.AssetKey]:
    """Stale or missing assets of the job and everything downstream of them, plus the assets
    that check live services.

    Dagster marks an asset stale only once an upstream asset *has* a new data version, so the
    downstream of a stale asset is included too; those assets return early in-run when their
    inputs' versions turn out unchanged (a new file with the same table, a retraining that
    keeps the champion)."""
    graph = defs.resolve_asset_graph()
    always = {key for key in job_keys if graph.get(key).tags.get(ALWAYS_CHECK_TAG) == "true"}
    stale = stale_or_missing(defs, instance, job_keys)
    downstream = {key for key in job_keys if graph.get_ancestor_asset_keys(key) & stale} if stale else set()
    return stale | downstream | always
