"""`container_image`: the prediction API as a container image, with the champion baked in.

docker/api.Dockerfile, built through the `container_engine` resource (the Docker Engine API of
Docker or Podman). The image's tag is a hash of what goes in (model name, version and files,
serving code, Dockerfile, pinned requirements, base image; see mlops_assets/image/context.py),
and it is the asset's data version: when the engine already has the tag nothing is built.
A build only ever creates the new tag, so a failed build leaves the last good image as it was.

Per target (targets.py): `local` builds when an engine answers and otherwise records a
labelled skip saying how to get one (the local API runs on Ray directly and does not need the
image); `sim` and `aws` need the image: no engine fails the asset. `sim` saves the image to an
archive under MLOPS_HOME/images/ for hosts without a registry; `aws` pushes it to the
configured registry (MLOPS_IMAGE_REGISTRY, e.g. ECR), or saves an archive when none is set.
"""

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml
from pydantic import Field

from mlops_assets import image as image_package
from mlops_assets import serving
from mlops_assets.image import context as image_context
from mlops_assets.image.context import ContextError
from mlops_assets.resources import container_engine as container_engine_module
from mlops_assets.resources.container_engine import ContainerEngine, EngineUnavailableError, ImageBuildError
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.serving import model as model_lib
from mlops_assets.settings import load_settings
from mlops_assets.staleness import ALWAYS_CHECK_TAG
from mlops_assets.automation import follows_upstream_data_versions
from mlops_assets.retries import EXTERNAL_STEP_RETRY, permanent
from mlops_assets.versioning import code_version_of, stable_hash

from .training import SelectedModel

# The Dockerfile, the code the image runs and the code that assembles and builds it.
IMAGE_CODE_VERSION = code_version_of(
    image_context.DOCKERFILE, Path(serving.__file__).parent, Path(image_package.__file__).parent, container_engine_module
)
ARCHIVE_PREFIX = "mlops-api-"


class ContainerImageConfig(dg.Config):
    serving_dir: str | None = Field(
        default=None,
        description="Build from this copy of the mlops_assets/serving package instead of the installed one.",
    )
    dockerfile: str | None = Field(default=None, description="Build with this Dockerfile instead of docker/api.Dockerfile.")


@dataclass(frozen=True)
class ContainerImage:
    """The `container_image` asset's value: the image that serves `model_version`."""

    ref: str | None  # repository:tag in the engine; None when skipped
    tag: str | None
    model_name: str
    model_version: str
    base_image: str | None = None
    image_id: str | None = None
    size_bytes: int = 0
    archive: str | None = None  # `docker load -i` this on a host without a registry
    remote_ref: str | None = None  # where it was pushed
    built: bool = False
    skipped: str | None = None  # why nothing was built


def _model_folder(selected: SelectedModel, tracking_uri: str, dest: Path) -> Path:
    """The champion's MLflow model folder, with the registry name and version recorded in it
    (`registered_model_meta`, which the API reports)."""
    folder, _, _ = model_lib.download(model_lib.ModelSource(selected.model_uri, tracking_uri), dest)
    meta = folder / "registered_model_meta"
    wanted = {"model_name": selected.name, "model_version": str(selected.version)}
    current = yaml.safe_load(meta.read_text()) if meta.is_file() else None
    if current != wanted:
        meta.write_text(yaml.safe_dump(wanted, sort_keys=True))
    return folder


def _skipped(context, selected_model: SelectedModel, reason: str, message: str) -> dg.Output:
    """The local target's labelled skip: nothing built, the run says why and what to do."""
    context.log.warning(f"SKIPPED building the API image ({reason}): {message}")
    return dg.Output(
        ContainerImage(None, None, selected_model.name, selected_model.version, skipped=message),
        data_version=dg.DataVersion(f"skipped:{selected_model.name}/{selected_model.version}"),
        metadata={"status": f"SKIPPED: {reason}", "how_to_get_an_engine": message},
    )


def _prune_archives(folder: Path, keep: Path) -> None:
    for old in folder.glob(f"{ARCHIVE_PREFIX}*.tar"):
        if old != keep:
            old.unlink(missing_ok=True)


@dg.asset(
    automation_condition=follows_upstream_data_versions(),
    retry_policy=EXTERNAL_STEP_RETRY,
    code_version=IMAGE_CODE_VERSION,
    kinds={"docker", "podman"},
    group_name="serving",
    # Cheap when the tag exists; runs on every `make run` so that an engine that appeared
    # since a skip (or an image removed by hand) is noticed.
    tags={ALWAYS_CHECK_TAG: "true"},
    description="The prediction API image with the champion baked in, tagged by a hash of its inputs.",
)
def container_image(
    context: dg.AssetExecutionContext,
    config: ContainerImageConfig,
    container_engine: ContainerEngine,
    mlflow: MlflowRegistry,
    selected_model: SelectedModel,
) -> dg.Output[ContainerImage]:
    # What the container targets ship to their hosts. Nothing is rebuilt when the tag (the
    # hash of what goes in) exists; a failed build never touches the previous image.
    settings = load_settings()
    images_dir = settings.home / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    if container_engine.reachable_host() is None:
        message = (
            f"no Docker-compatible engine answers (tried {', '.join(container_engine.candidates())}"
            f"{'; last error ' + container_engine._last_error if container_engine._last_error else ''}). "
            f"{container_engine_module.HOW_TO_GET_AN_ENGINE}"
        )
        if container_engine.required:  # waiting does not install an engine: not retried
            raise permanent(f"container_image needs an engine in this target: {message}")
        return _skipped(context, selected_model, "no container engine", message)

    started = time.monotonic()
    found = _find_or_build(context, config, container_engine, mlflow, selected_model, images_dir)
    if isinstance(found, dg.Output):  # the local target's labelled skip
        return found
    tag, hashes, base_image, built, build_seconds, image_id, size = (
        found.tag, found.hashes, found.base_image, found.built, found.build_seconds, found.image_id, found.size_bytes
    )
    ref = container_engine.ref(tag)

    archive = None
    if container_engine.save_archive:
        archive = images_dir / f"{ARCHIVE_PREFIX}{tag}.tar"
        if not archive.is_file():
            container_engine.save(ref, archive)
            context.log.info(f"saved {ref} to {archive} ({archive.stat().st_size / 1e6:.0f} MB)")
        _prune_archives(images_dir, archive)
    remote = None
    if container_engine.registry:
        try:
            remote = container_engine.push(tag, log=context.log)
        except Exception as exc:  # engine, registry or AWS credentials: say which and what to check
            raise dg.Failure(
                description=f"pushing {ref} to {container_engine.registry} failed: {type(exc).__name__}: {exc}\n"
                "Check the registry address (MLOPS_IMAGE_REGISTRY), and for ECR the AWS credentials "
                "(AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and that the repository exists."
            ) from None
        context.log.info(f"pushed {remote}")

    value = ContainerImage(
        ref=ref,
        tag=tag,
        model_name=selected_model.name,
        model_version=str(selected_model.version),
        base_image=base_image,
        image_id=image_id,
        size_bytes=size,
        archive=str(archive) if archive else None,
        remote_ref=remote,
        built=built,
    )
    metadata = {
        "image": ref,
        "tag": tag,
        "status": "built" if built else "already built: nothing to do",
        "rebuilt": built,
        "size_mb": round(size / 1e6, 1),
        "build_seconds": round(build_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "base_image": base_image,
        "model_version": str(selected_model.version),
        "inputs": dg.MetadataValue.json(hashes),
        "model_downloaded": found.model_downloaded,
        "engine": container_engine.reachable_host() or "",
    }
    if archive:
        metadata["archive"] = dg.MetadataValue.path(str(archive))
    if remote:
        metadata["pushed"] = remote
    return dg.Output(value, data_version=dg.DataVersion(tag), metadata=metadata)


@dataclass(frozen=True)
class _Found:
    """An image in the engine for the champion: found by its tag, or just built."""

    tag: str
    hashes: dict
    base_image: str
    built: bool
    build_seconds: float
    image_id: str
    size_bytes: int
    model_downloaded: bool = True  # False: found from the recipe record alone


def _find_or_build(context, config: ContainerImageConfig, container_engine: ContainerEngine, mlflow: MlflowRegistry,
                   selected_model: SelectedModel, images_dir: Path) -> "_Found | dg.Output":
    """The image for this champion: the one the engine has when its tag exists, else a new build. The model
    files are downloaded only when the recipe (registry version, code, Dockerfile, pins) is new
    or its image is gone: a registered version's files never change."""
    dockerfile = Path(config.dockerfile) if config.dockerfile else image_context.DOCKERFILE
    serving_dir = Path(config.serving_dir) if config.serving_dir else image_context.SERVING_DIR
    requirements = image_context.requirements_text(image_context.closure())
    recipe = stable_hash({
        "model": selected_model.model_uri, "registry": mlflow.tracking_uri,
        "serving_code": image_context.serving_code_hash(serving_dir),
        "dockerfile": hashlib.sha256(dockerfile.read_bytes()).hexdigest() if dockerfile.is_file() else None,
        "requirements": requirements, "preferred_base": container_engine.base_image,
    })
    known = _recipes(images_dir).get(recipe)
    if known:
        existing = container_engine.image(container_engine.ref(known["tag"]))
        if existing is not None:
            context.log.info(f"{container_engine.ref(known['tag'])} exists (same model version, code, Dockerfile, "
                             "requirements and base): nothing to download or build")
            return _Found(known["tag"], known["hashes"], known["base_image"], False, 0.0, existing.id,
                          int(existing.attrs.get("Size") or 0), model_downloaded=False)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=images_dir))
    try:
        model_dir = _model_folder(selected_model, mlflow.tracking_uri, work / "download")
        try:
            try:
                base_image = container_engine.ensure_base_image(container_engine.base_image, log=context.log)
            except EngineUnavailableError as exc:
                if container_engine.required:
                    raise
                return _skipped(context, selected_model, "no base image", str(exc))
            inputs = image_context.image_inputs(
                model_dir, selected_model.name, str(selected_model.version), base_image,
                dockerfile=dockerfile, serving_dir=serving_dir, requirements=requirements,
            )
        except EngineUnavailableError as exc:
            raise dg.Failure(description=str(exc)) from None
        except ContextError as exc:
            raise permanent(str(exc)) from None
        ref = container_engine.ref(inputs.tag)
        existing = container_engine.image(ref)
        if existing is not None:
            context.log.info(f"{ref} exists (same model, code, Dockerfile, requirements and base): nothing to build")
            built, build_seconds = False, 0.0
            image_id, size = existing.id, int(existing.attrs.get("Size") or 0)
        else:
            context.log.info(f"building {ref} for {selected_model.name} version {selected_model.version} on {base_image}")
            try:
                context_dir = image_context.write_context(inputs, work / "context", image_context.default_wheel_cache(), context.log)
                result = container_engine.build(context_dir, inputs.tag, inputs.build_args(), log=context.log)
            except ContextError as exc:
                raise permanent(str(exc)) from None
            except ImageBuildError as exc:  # an offline build fails the same way twice
                raise permanent(
                    f"{exc}\nThe previous image, if any, is unchanged.",
                    metadata={"build_log_tail": dg.MetadataValue.md("```\n" + "\n".join(exc.log_tail) + "\n```")},
                ) from None
            built, build_seconds, image_id, size = True, result.seconds, result.image_id, result.size_bytes
            context.log.info(f"built {ref} in {build_seconds:.0f}s: {size / 1e6:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remember(images_dir, recipe, {"tag": inputs.tag, "hashes": inputs.hashes, "base_image": base_image})
    return _Found(inputs.tag, inputs.hashes, base_image, built, build_seconds, image_id, size)


RECIPES_FILE = "recipes.json"
RECIPES_KEPT = 50


def _recipes(images_dir: Path) -> dict[str, dict]:
    try:
        return json.loads((images_dir / RECIPES_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _remember(images_dir: Path, recipe: str, entry: dict) -> None:
    """recipe -> image, newest last; written atomically (a killed run leaves the old file)."""
    recipes = _recipes(images_dir)
    recipes.pop(recipe, None)
    recipes[recipe] = entry
    kept = dict(list(recipes.items())[-RECIPES_KEPT:])
    partial = images_dir / f".{RECIPES_FILE}.partial"
    partial.write_text(json.dumps(kept, indent=1))
    partial.replace(images_dir / RECIPES_FILE)
