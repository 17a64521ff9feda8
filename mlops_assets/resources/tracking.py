"""The MLflow tracking store the pipeline trains into, made ready by the `tracking_server` asset
before `candidate_models` opens it.

One class per kind of target, chosen in targets.py (resource key `tracking_store`):

- `ConfiguredStore`: the store `MLFLOW_TRACKING_URI` names (default: the sqlite file under
  MLOPS_HOME; or a PostgreSQL database; or a team's tracking server), reached once. Nothing is
  deployed. Every target uses it today: `sim` and `aws` train into the control machine's store
  unless MLFLOW_TRACKING_URI points elsewhere.

The asset's data version is the store's address (never a password): pointing the pipeline at
another store makes the training stale, so the next run trains into the new store instead of
assuming the old store's runs are there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from mlops_assets.resources.mlflow_registry import MlflowRegistry, shown_uri, store_kind
from mlops_assets.versioning import stable_hash


@dataclass(frozen=True)
class TrackingStore:
    """The `tracking_server` asset's value: where runs, models and artifacts go."""

    kind: str  # "sqlite" | "database" | "server"
    address: str  # the URI without any password
    ui_url: str
    deployed_by: str  # "nothing" (configured) or what started it


@dataclass(frozen=True)
class TrackingResult:
    store: TrackingStore
    data_version: str
    metadata: dict[str, Any]


class TrackingServer(dg.ConfigurableResource):
    """Makes the tracking store ready (see the module docstring)."""

    def ensure(self, inventory: dict, *, log) -> TrackingResult:  # pragma: no cover - abstract
        raise NotImplementedError


class ConfiguredStore(TrackingServer):
    """The store MLFLOW_TRACKING_URI names (default sqlite under MLOPS_HOME): reached, not deployed."""

    mlflow: MlflowRegistry

    def ensure(self, inventory: dict, *, log) -> TrackingResult:
        address = shown_uri(self.mlflow.tracking_uri)
        kind = store_kind(self.mlflow.tracking_uri)
        # A server or database that does not answer fails here, naming the setting; a sqlite
        # store is created (and migrated) by this first call.
        self.mlflow.client().search_experiments(max_results=1)
        store = TrackingStore(kind=kind, address=address, ui_url=self.mlflow.ui_url, deployed_by="nothing")
        log.info(f"MLflow store ({kind}): {address}")
        return TrackingResult(store, stable_hash({"kind": kind, "address": address}), {
            "store": address, "kind": kind, "mlflow_ui": dg.MetadataValue.url(self.mlflow.ui_url),
            "deployed_by": "nothing (MLFLOW_TRACKING_URI, else the sqlite file under MLOPS_HOME)",
        })
