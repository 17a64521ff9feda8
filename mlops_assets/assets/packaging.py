"""`container_image`: the prediction API as a container image, with the champion baked in.

docker/api.Dockerfile on the runtime image of docker/api-runtime.Dockerfile (built once per set
of requirements and base), through the `container_engine` resource (the Docker Engine API of
Docker or Podman) by image/build.py. The tag is a hash of what goes in (model files, serving
code, both Dockerfiles, pinned requirements, base image) and is the asset's data version: when the
engine already has it nothing is built, and a failed build leaves the last good image as it was.
What the engine resource does per target (targets.py): `local` builds when an engine answers,
else records a labelled skip (the local API runs on Ray directly); `sim` saves an archive for
hosts without a registry; `aws` pushes to MLOPS_IMAGE_REGISTRY (or saves an archive).
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from mlops_assets import image as image_package
from mlops_assets import serving
from mlops_assets.freshness import LIVE_SERVICE_TAG, rebuild_condition
from mlops_assets.image import context as image_context
from mlops_assets.image.build import ContainerImage, PermanentImageError, image_for_champion
from mlops_assets.resources import container_engine as container_engine_module
from mlops_assets.resources.container_engine import ContainerEngine
from mlops_assets.retries import EXTERNAL_STEP_RETRY, permanent
from mlops_assets.versioning import code_version_of

from .training import SelectedModel

# The Dockerfile, the code the image runs and the code that assembles and builds it.
IMAGE_CODE_VERSION = code_version_of(
    image_context.DOCKERFILE, image_context.RUNTIME_DOCKERFILE, Path(serving.__file__).parent, Path(image_package.__file__).parent, container_engine_module
)


class ContainerImageConfig(dg.Config):
    serving_dir: str | None = Field(
        default=None, description="Build from this copy of the mlops_assets/serving package instead of the installed one.")
    dockerfile: str | None = Field(default=None, description="Build with this Dockerfile instead of docker/api.Dockerfile.")


@dg.asset(
    automation_condition=rebuild_condition(),
    retry_policy=EXTERNAL_STEP_RETRY,
    code_version=IMAGE_CODE_VERSION,
    kinds={"docker", "podman"},
    group_name="serving",
    # Cheap when the tag exists; runs on every `make run` so that an engine that appeared
    # since a skip (or an image removed by hand) is noticed.
    tags={LIVE_SERVICE_TAG: "true"},
    description="The prediction API image with the champion baked in, tagged by a hash of its inputs.",
)
def container_image(
    context: dg.AssetExecutionContext, config: ContainerImageConfig, container_engine: ContainerEngine,
    selected_model: SelectedModel,
) -> dg.Output[ContainerImage]:
    # What the container targets ship to their hosts.
    try:
        result = image_for_champion(
            container_engine, selected_model.champion, Path(container_engine.images_dir), context.log,
            serving_dir=Path(config.serving_dir) if config.serving_dir else None,
            dockerfile=Path(config.dockerfile) if config.dockerfile else None,
        )
    except PermanentImageError as exc:
        tail = {"build_log_tail": dg.MetadataValue.md("```\n" + "\n".join(exc.log_tail) + "\n```")} if exc.log_tail else None
        raise permanent(str(exc), metadata=tail) from None
    image = result.image
    metadata = {"image": image.ref or "none", "tag": image.tag or "none", "rebuilt": image.built,
                "size_mb": round(image.size_bytes / 1e6, 1), "base_image": image.base_image or "none",
                "model_version": image.model_version, **result.details}
    if image.archive:
        metadata["archive"] = dg.MetadataValue.path(image.archive)
        metadata["archive_mb"] = round(Path(image.archive).stat().st_size / 1e6, 1)
    if image.runtime_archive:  # the archive above is layered on this one, shipped once per host
        metadata["runtime_archive"] = dg.MetadataValue.path(image.runtime_archive)
    if image.remote_ref:
        metadata["pushed"] = image.remote_ref
    return dg.Output(image, data_version=dg.DataVersion(result.data_version), metadata=metadata)
