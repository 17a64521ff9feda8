"""Helpers for tests of the ML phase: MLflow counts and Dagster staleness."""

import dagster as dg

from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.freshness import stale_or_missing


def registry_for(settings) -> MlflowRegistry:
    return MlflowRegistry(tracking_uri=settings.tracking_uri, artifact_root=str(settings.artifact_root))


def count_runs(registry: MlflowRegistry) -> int:
    return len(registry.client().search_runs([registry.experiment_id()], max_results=1000))


def count_versions(registry: MlflowRegistry, name: str) -> int:
    return len(registry.client().search_model_versions(f"name = '{name}'"))


def stale_keys(defs: dg.Definitions, instance: dg.DagsterInstance, keys: list[str]) -> set[str]:
    """Those of `keys` that Dagster considers stale or missing (what the UI shows as out of date)."""
    return {key.to_user_string() for key in stale_or_missing(instance, defs.resolve_asset_graph(), {dg.AssetKey(k) for k in keys})}
