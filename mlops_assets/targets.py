"""MLOPS_TARGET -> the resources of that target: the one place where targets differ.

`local` runs everything on this machine; `sim` rehearses `aws` offline; `aws` uses real EC2.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.prometheus_api import PrometheusApi
from mlops_assets.resources.opentofu import OpenTofu, RehearsalOpenTofu, ThisMachine
from mlops_assets.resources.ray_serve import RayServe
from mlops_assets.settings import PROJECT_ROOT, Settings


def shared_resources(settings: Settings) -> dict[str, Any]:
    return {
        "mlflow": MlflowRegistry(
            tracking_uri=settings.tracking_uri,
            artifact_root=str(settings.artifact_root),
            ui_url=settings.mlflow_ui_url,
        ),
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.io_dir)),
        # What the drift sensor reads; the local target's Prometheus by default.
        "prometheus_api": PrometheusApi(url=settings.prometheus_url),
    }


def infrastructure_for(settings: Settings):
    """`tofu_state`'s hosts: this machine (local), infra_tf/ on EC2 (aws), or on the EC2
    emulator through the provider test double (sim). OpenTofu's working copy and local state
    live in MLOPS_HOME/tofu/<target>; aws variables come from MLOPS_HOME/aws.tfvars (or
    TF_VAR_* variables)."""
    if settings.target == "local":
        return ThisMachine()
    common = {"module_dir": str(PROJECT_ROOT / "infra_tf"), "work_dir": str(settings.home / "tofu" / settings.target)}
    if settings.target == "sim":
        return RehearsalOpenTofu(**common, rehearsal_dir=str(settings.home / "rehearsal"), project_root=str(PROJECT_ROOT))
    return OpenTofu(**common, target="aws", var_file=str(settings.home / "aws.tfvars"))


def resources_for(settings: Settings) -> dict[str, Any]:
    resources = shared_resources(settings)
    # Later stages add their per-target resources here (container engine, OpenTofu, Ansible).
    resources["infrastructure"] = infrastructure_for(settings)
    # The prediction API: a local Ray instance on loopback (API :8000, metrics :8080); the
    # container targets replace it with the image on the hosts.
    resources["ray_serve"] = RayServe(state_dir=str(settings.home / "serving"))
    return resources
