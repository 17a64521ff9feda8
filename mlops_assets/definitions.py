"""The Dagster Definitions of the project: assets, checks and resources for MLOPS_TARGET."""

import warnings

import dagster as dg

# `Output(data_version=...)` is how assets report content-derived versions; it has been
# "beta" for many releases. Say it once here instead of on every materialization.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from mlops_assets.assets.data import dataset, dataset_source
from mlops_assets.assets.deployment import deployed_api
from mlops_assets.assets.hosts import deployed_hosts
from mlops_assets.assets.infrastructure import destroy_infrastructure, tofu_state
from mlops_assets.assets.packaging import container_image
from mlops_assets.assets.monitoring import dashboards
from mlops_assets.assets.training import candidate_models, selected_model
from mlops_assets.automation import build_automation
from mlops_assets.checks import DATASET_CHECKS
from mlops_assets.settings import load_settings
from mlops_assets.targets import resources_for

SOURCE_ASSETS = [dataset_source]
ASSETS = [*SOURCE_ASSETS, dataset, candidate_models, selected_model, container_image, tofu_state, deployed_hosts, deployed_api, dashboards]

# `make run` materializes this job: the whole graph for the chosen target.
materialize_all = dg.define_asset_job("materialize_all", selection=dg.AssetSelection.all())
# Hash the raw data source: a changed file makes `dataset` stale (run first by `make run`).
observe_sources = dg.define_asset_job("observe_sources", selection=dg.AssetSelection.assets(*(a.key for a in SOURCE_ASSETS)))
# The ML phase alone: dataset -> candidate_models -> selected_model (and their checks).
ml_phase = dg.define_asset_job("ml_phase", selection=dg.AssetSelection.groups("ml"))


def build_definitions(settings=None) -> dg.Definitions:
    settings = settings or load_settings()
    schedules, sensors = build_automation(settings)
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=DATASET_CHECKS,
        jobs=[materialize_all, ml_phase, observe_sources, destroy_infrastructure],
        schedules=schedules,
        sensors=sensors,
        resources=resources_for(settings),
        # Steps are small and the machine has 2 cores: one process avoids paying the
        # import of dagster, MLflow and scikit-learn once per step.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
