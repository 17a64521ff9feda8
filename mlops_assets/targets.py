"""MLOPS_TARGET -> the resources of that target: the one place where targets differ.

`local` runs everything on this machine; `sim` rehearses `aws` offline; `aws` uses real EC2.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.settings import Settings


def shared_resources(settings: Settings) -> dict[str, Any]:
    return {
        "mlflow": MlflowRegistry(
            tracking_uri=settings.tracking_uri,
            artifact_root=str(settings.artifact_root),
            ui_url=settings.mlflow_ui_url,
        ),
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.io_dir)),
    }


def resources_for(settings: Settings) -> dict[str, Any]:
    resources = shared_resources(settings)
    # Later stages add their per-target resources here (container engine, OpenTofu, Ansible).
    return resources
