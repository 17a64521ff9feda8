"""Which assets Dagster considers out of date: what `make run` materializes.

Dagster's CLI cannot select `status:stale` (NotImplementedError in 1.13), and only
schedules and sensors get `stale_assets_only`; this module gives `make run` the same answer
the UI shows, through the resolver the UI and the sensor daemon use (rebuild.py uses it)."""

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
