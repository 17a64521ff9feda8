"""`tracking_server`: the MLflow store the training writes to, ready before `candidate_models`;
and the `tracking_backup` / `tracking_restore` jobs of the server `sim` and `aws` deploy.

The `tracking_store` resource does the work (resources/tracking.py): reaching the configured
store (the sqlite file under MLOPS_HOME by default, a PostgreSQL database or a team's tracking
server when MLFLOW_TRACKING_URI says so). It sits after `tofu_state` because a store on the
target's own hosts needs them first.
"""

import dagster as dg
from pydantic import Field

from mlops_assets.freshness import rebuild_condition
from mlops_assets.metadata import previous_materialization
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


class BackupConfig(dg.Config):
    keep: int = Field(default=7, ge=1, le=1000, description="How many backups to keep in the bucket (the newest).")


class RestoreConfig(dg.Config):
    backup_key: str = Field(default="", description="The backup to restore: its key in the bucket (as tracking_backup "
                            "reports it) or its name under backups/; empty: the newest.")
    confirm_target: str = Field(default="", description="The target's name (sim, aws): a restore replaces the "
                                "server's databases with the backup's, runs and models logged since are lost.")


def _inventory(context: dg.OpExecutionContext) -> dict:
    """The hosts of the latest tofu_state materialization (its ansible_inventory metadata)."""
    inventory = previous_materialization(context, dg.AssetKey("tofu_state")).metadata.get("ansible_inventory")
    if not inventory:
        raise dg.Failure(description="no hosts recorded: tofu_state has not been materialized in this Dagster "
                                     "instance (or its hosts were destroyed). Run make run first")
    return inventory


@dg.op(description="Dump the tracking server's databases into the artifact bucket (timestamped), keep the newest N.")
def back_up_tracking_store(context: dg.OpExecutionContext, config: BackupConfig, tracking_store: TrackingServer) -> dict:
    inventory = _inventory(context) if tracking_store.deployed_on() else {}
    done = tracking_store.backup(inventory, keep=config.keep, log=context.log)
    context.add_output_metadata({"backup_key": done["key"], "kept": config.keep, "seconds": done["seconds"]})
    return done


@dg.op(description="Bring the tracking server's databases back from a backup (confirm_target required).")
def restore_tracking_store(context: dg.OpExecutionContext, config: RestoreConfig, tracking_store: TrackingServer) -> dict:
    target = tracking_store.deployed_on()
    if target and config.confirm_target != target:
        raise dg.Failure(description=(
            f"Refusing to restore: confirm_target is {config.confirm_target!r} but this is the {target!r} target. "
            f"Set confirm_target: {target} in the run config (runs and models logged since the backup are lost)."))
    inventory = _inventory(context) if target else {}
    done = tracking_store.restore(inventory, key=config.backup_key, log=context.log)
    context.add_output_metadata({"restored_from": done["key"], "champion": str(done["champion"]),
                                 "seconds": done["seconds"]})
    return done


@dg.job(description="Back up the tracking server's PostgreSQL to the artifact bucket (sim, aws); "
                    "tracking_backup_schedule runs it daily once turned on.")
def tracking_backup():
    back_up_tracking_store()


@dg.job(description="Restore the tracking server's databases from a backup. Needs `confirm_target: <target>`.")
def tracking_restore():
    restore_tracking_store()


# Off by default, like retraining_schedule: turn it on in the UI (Automation) or with
# `dagster schedule start tracking_backup_schedule`.
tracking_backup_schedule = dg.ScheduleDefinition(
    job=tracking_backup, cron_schedule="30 2 * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Daily backup of the tracking server's databases (02:30), the newest 7 kept.")
