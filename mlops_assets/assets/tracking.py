"""`tracking_server`: the MLflow store the training writes to, ready before `candidate_models`.

The `tracking_store` resource does the work (resources/tracking.py): reaching the configured
store (the sqlite file under MLOPS_HOME by default, a PostgreSQL database or a team's tracking
server when MLFLOW_TRACKING_URI says so). It sits after `tofu_state` because a store on the
target's own hosts needs them first.
"""

import dagster as dg

from mlops_assets.freshness import rebuild_condition
from mlops_assets.resources import tracking as tracking_module
from mlops_assets.resources.tracking import TrackingServer, TrackingStore
from mlops_assets.versioning import code_version_of

TRACKING_CODE_VERSION = code_version_of(tracking_module)


@dg.asset(
    automation_condition=rebuild_condition(),
    code_version=TRACKING_CODE_VERSION,
    kinds={"mlflow"},
    group_name="infrastructure",
    description="The MLflow tracking store the candidates are logged to and the champion is registered in "
    "(MLFLOW_TRACKING_URI, else the sqlite file under MLOPS_HOME), reached before training opens it.",
)
def tracking_server(
    context: dg.AssetExecutionContext, tracking_store: TrackingServer, tofu_state: dict
) -> dg.Output[TrackingStore]:
    result = tracking_store.ensure(tofu_state.get("ansible_inventory") or {}, log=context.log)
    return dg.Output(result.store, data_version=dg.DataVersion(result.data_version), metadata=result.metadata)
