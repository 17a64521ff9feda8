"""The Dagster Definitions of the project: assets, checks, jobs, automation and the resources
of MLOPS_TARGET.

`build_definitions(settings)` is the one place where settings become definitions; `defs` is
what `dagster dev` (workspace.yaml) loads: Dagster calls it when it loads the code location,
so importing this module reads no environment.
"""

import os
import warnings

import dagster as dg

# `Output(data_version=...)`, observable source assets and user-code automation conditions
# have been "beta" for many releases; say it once here instead of on every materialization.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from mlops_assets.assets.data import dataset, dataset_source  # noqa: E402
from mlops_assets.assets.deployment import deployed_api  # noqa: E402
from mlops_assets.assets.hosts import deployed_hosts  # noqa: E402
from mlops_assets.assets.infrastructure import destroy_infrastructure, tofu_state, tofu_state_for  # noqa: E402
from mlops_assets.assets.monitoring import dashboards  # noqa: E402
from mlops_assets.assets.packaging import container_image  # noqa: E402
from mlops_assets.assets.tracking import (  # noqa: E402
    tracking_backup,
    tracking_backup_schedule,
    tracking_restore,
    tracking_server,
)
from mlops_assets.assets.training import candidate_models, selected_model  # noqa: E402
from mlops_assets.automation import build_automation  # noqa: E402
from mlops_assets.checks import DATASET_CHECKS, DEPLOYED_API_CHECKS  # noqa: E402
from mlops_assets.pipeline_metrics import with_pipeline_metrics  # noqa: E402
from mlops_assets.settings import Settings, load_settings  # noqa: E402
from mlops_assets.targets import AWS_VAR_FILE, resources_for  # noqa: E402

SOURCE_ASSETS = [dataset_source]
# Every materialization pushes the pipeline's metrics (pipeline_metrics.py: a success and a
# failure hook on each materializable asset, so every job and the UI push alike).
ASSETS = with_pipeline_metrics(
    [*SOURCE_ASSETS, dataset, tracking_server, candidate_models, selected_model, container_image, tofu_state, deployed_hosts,
     deployed_api, dashboards])

# `make run` materializes this job: the whole graph for the chosen target.
materialize_all = dg.define_asset_job("materialize_all", selection=dg.AssetSelection.all())
# Hash the raw data source: a changed file makes `dataset` stale (run first by `make run`).
observe_sources = dg.define_asset_job("observe_sources", selection=dg.AssetSelection.assets(*(a.key for a in SOURCE_ASSETS)))
# The ML phase alone: dataset -> candidate_models -> selected_model (and their checks), with
# the MLflow store they need (tracking_server, and tofu_state for a store on the target's hosts).
ml_phase = dg.define_asset_job("ml_phase", selection=dg.AssetSelection.groups("ml").upstream().materializable())


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    schedules, sensors = build_automation(settings)
    # tofu_state is stale when the user's OpenTofu variables changed (the aws var file, TF_VAR_*).
    infrastructure = with_pipeline_metrics([tofu_state_for(str(settings.home / AWS_VAR_FILE) if settings.target == "aws"
                                                           else None, os.environ)])[0]
    return dg.Definitions(
        assets=[infrastructure if getattr(a, "key", None) == tofu_state.key else a for a in ASSETS],
        asset_checks=[*DATASET_CHECKS, *DEPLOYED_API_CHECKS],
        jobs=[materialize_all, ml_phase, observe_sources, destroy_infrastructure, tracking_backup, tracking_restore],
        schedules=[*schedules, tracking_backup_schedule],
        sensors=sensors,
        resources=resources_for(settings),
        # Steps are small and the machine has 2 cores: one process avoids paying the
        # import of dagster, MLflow and scikit-learn once per step.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
