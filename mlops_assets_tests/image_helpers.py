"""The real API image for tests: `container_image` materialized on a trained state folder
(conftest's trained_home) with an engine resource the test chooses."""

from __future__ import annotations

import dagster as dg

from mlops_assets.assets.packaging import ContainerImageConfig, container_image
from mlops_assets.assets.training import selected_model
from mlops_assets.resources.container_engine import ContainerEngine
from mlops_assets.resources.mlflow_registry import MlflowRegistry


def materialize_container_image(trained_home, engine: ContainerEngine, config: ContainerImageConfig | None = None,
                                raise_on_error=True):
    settings = trained_home["settings"]
    resources = {
        "container_engine": engine,
        "mlflow": MlflowRegistry(tracking_uri=settings.tracking_uri, artifact_root=str(settings.artifact_root)),
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.io_dir)),
    }
    run_config = {"ops": {"container_image": {"config": (config or ContainerImageConfig()).model_dump()}}}
    return dg.materialize(
        [*selected_model.to_source_assets(), container_image],
        resources=resources,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )
