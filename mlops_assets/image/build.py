"""The API image for a champion: found when it exists, built when it does not.

The tag is a hash of what goes in (image/context.py): when the engine already has it nothing
is built, and a failed build never touches an earlier image. Before even downloading the model,
the recipe (registry version, serving code, Dockerfile, pinned requirements, preferred base)
is looked up in the `image_recipes` record: a registered version's files never change, so the
same recipe names the same tag. `container_image` calls `image_for_champion()`.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlops_assets.image import archive as image_archive
from mlops_assets.image import context as image_context
from mlops_assets.image.context import ContextError
from mlops_assets.image.requirements import roots_for
from mlops_assets.resources.container_engine import ContainerEngine, EngineUnavailableError, ImageBuildError
from mlops_assets.resources.mlflow_registry import Champion
from mlops_assets.serving import model as model_lib
from mlops_assets.state import StateFile
from mlops_assets.versioning import stable_hash

ARCHIVE_PREFIX = "mlops-api-"
RUNTIME_ARCHIVE_PREFIX = "api-runtime-"  # the runtime's archive, shipped once per host (image/archive.py)
RECIPES_KEPT = 50


class PermanentImageError(RuntimeError):
    """A failure that retrying cannot fix (a broken Dockerfile, no engine where one is required)."""

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.log_tail = log_tail or []


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
    # The runtime image's archive when `archive` is layered on it (image/archive.py): load it
    # first on a host that lacks the runtime.
    runtime_archive: str | None = None
    remote_ref: str | None = None  # where it was pushed
    built: bool = False
    skipped: str | None = None  # why nothing was built


@dataclass(frozen=True)
class ImageResult:
    image: ContainerImage
    data_version: str
    details: dict[str, Any] = field(default_factory=dict)


def image_for_champion(engine: ContainerEngine, champion: Champion, images_dir: Path, log, *,
                       serving_dir: Path | None = None, dockerfile: Path | None = None) -> ImageResult:
    """The image that serves `champion` (found or built), saved as an archive and pushed when
    the engine resource says so. No engine: a labelled skip when the engine is optional (local),
    PermanentImageError otherwise."""
    images_dir.mkdir(parents=True, exist_ok=True)
    if engine.reachable_host() is None:
        message = engine.unavailable_message()
        if engine.required:  # waiting does not install an engine: not retried
            raise PermanentImageError(f"container_image needs an engine in this target: {message}")
        return _skipped(champion, "no container engine", message, log)
    started = time.monotonic()
    try:
        found = _find_or_build(engine, champion, images_dir, log, serving_dir or image_context.SERVING_DIR,
                               dockerfile or image_context.DOCKERFILE)
    except EngineUnavailableError as exc:
        if engine.required:
            raise
        return _skipped(champion, "no base image", str(exc), log)
    ref = engine.ref(found["tag"])
    archive = runtime_archive = None
    if engine.save_archive:
        archive, runtime_archive = _save_archives(engine, ref, found["tag"], found.get("runtime"), images_dir, log)
    remote = _push(engine, found["tag"], log) if engine.registry else None
    image = ContainerImage(
        ref=ref, tag=found["tag"], model_name=champion.name, model_version=str(champion.version),
        base_image=found["base_image"], image_id=found["image_id"], size_bytes=found["size"],
        archive=str(archive) if archive else None, remote_ref=remote, built=found["built"],
        runtime_archive=str(runtime_archive) if runtime_archive else None,
    )
    details = {
        "status": "built" if found["built"] else "already built: nothing to do",
        "build_seconds": round(found["build_seconds"], 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "inputs": found["hashes"],
        "model_downloaded": found["downloaded"],
        # Recipes recorded before the runtime image existed have no "runtime" entry.
        "runtime_image": found.get("runtime") or "",
        "runtime_status": "built" if found["runtime_built"] else "reused",
        "engine": engine.reachable_host() or "",
    }
    return ImageResult(image, found["tag"], details)


def _save_archives(engine: ContainerEngine, ref: str, tag: str, runtime: str | None, images_dir: Path,
                   log) -> tuple[Path, Path | None]:
    """The archives a host without a registry loads: the runtime image's, saved once, and this
    image's layered on it (only its own layers, image/archive.py), or its full archive when it
    has no runtime (a recipe recorded before the runtime image existed). The previous images'
    archives are removed."""
    archive = images_dir / f"{ARCHIVE_PREFIX}{tag}.tar"
    if runtime and engine.image(runtime) is None:  # removed from the engine since (the API image keeps its layers)
        log.warning(f"the runtime {runtime} is no longer in the engine: saving the full image archive instead")
        runtime = None
        if archive.is_file() and not image_archive.is_complete(archive):
            archive.unlink()
    runtime_archive = images_dir / f"{RUNTIME_ARCHIVE_PREFIX}{runtime.rpartition(':')[2]}.tar" if runtime else None
    if runtime_archive is not None and not runtime_archive.is_file():
        started = time.monotonic()
        engine.save(runtime, runtime_archive)
        log.info(f"saved the runtime {runtime} to {runtime_archive} ({runtime_archive.stat().st_size / 1e6:.0f} MB, "
                 f"{time.monotonic() - started:.0f}s): shipped once to each host that lacks it")
    if not archive.is_file():
        started = time.monotonic()
        if runtime_archive is None:
            engine.save(ref, archive)
            log.info(f"saved {ref} to {archive} ({archive.stat().st_size / 1e6:.0f} MB)")
        else:
            full = archive.with_name(archive.name + ".full")
            try:
                engine.save(ref, full)
                layered = image_archive.write_layered(full, archive, image_archive.diff_ids(runtime_archive))
            finally:
                full.unlink(missing_ok=True)
            log.info(f"saved {ref} to {archive}: its {layered.own_layers} layers above the runtime, "
                     f"{layered.size_bytes / 1e6:.1f} MB ({time.monotonic() - started:.0f}s)")
    for prefix, keep in ((ARCHIVE_PREFIX, archive), (RUNTIME_ARCHIVE_PREFIX, runtime_archive)):
        for old in images_dir.glob(f"{prefix}*.tar"):
            if old != keep and (keep is not None or prefix == ARCHIVE_PREFIX):
                old.unlink(missing_ok=True)
    return archive, runtime_archive


def _push(engine: ContainerEngine, tag: str, log) -> str:
    try:
        remote = engine.push(tag, log=log)
    except Exception as exc:  # engine, registry or AWS credentials: say which and what to check
        raise RuntimeError(
            f"pushing {engine.ref(tag)} to {engine.registry} failed: {type(exc).__name__}: {exc}\n"
            "Check the registry address (MLOPS_IMAGE_REGISTRY), and for ECR the AWS credentials "
            "(AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and that the repository exists."
        ) from None
    log.info(f"pushed {remote}")
    return remote


def _skipped(champion: Champion, reason: str, message: str, log) -> ImageResult:
    """The local target's labelled skip: nothing built, the run says why and what to do."""
    log.warning(f"SKIPPED building the API image ({reason}): {message}")
    image = ContainerImage(None, None, champion.name, str(champion.version), skipped=message)
    return ImageResult(image, f"skipped:{champion.name}/{champion.version}",
                       {"status": f"SKIPPED: {reason}", "how_to_get_an_engine": message})


def _recipes(images_dir: Path) -> StateFile:
    from mlops_assets.state import RECORDS

    return RECORDS["image_recipes"].in_folder(images_dir)


def _find_or_build(engine: ContainerEngine, champion: Champion, images_dir: Path, log, serving_dir: Path,
                   dockerfile: Path) -> dict[str, Any]:
    """The image for this champion: the one the engine has when its tag exists, else a new
    build. The model files are downloaded only when the recipe is new or its image is gone."""
    # The served engine decides the serving stack: no scikit-learn, pandas or scipy for ONNX.
    requirements = image_context.requirements_text(image_context.closure(roots_for(champion.engine)))
    recipe = stable_hash({
        "model": champion.model_uri, "registry": champion.tracking_uri, "engine": champion.engine,
        "serving_code": image_context.serving_code_hash(serving_dir),
        "dockerfile": hashlib.sha256(dockerfile.read_bytes()).hexdigest() if dockerfile.is_file() else None,
        "runtime_dockerfile": hashlib.sha256(image_context.RUNTIME_DOCKERFILE.read_bytes()).hexdigest(),
        "requirements": requirements, "preferred_base": engine.base_image,
    })
    known = (_recipes(images_dir).read() or {}).get(recipe)
    if known:
        existing = engine.image(engine.ref(known["tag"]))
        if existing is not None:
            log.info(f"{engine.ref(known['tag'])} exists (same model version, code, Dockerfile, requirements and base): "
                     "nothing to download or build")
            return {**known, "built": False, "build_seconds": 0.0, "image_id": existing.id,
                    "size": int(existing.attrs.get("Size") or 0), "downloaded": False, "runtime_built": False}
    work = Path(tempfile.mkdtemp(prefix="build-", dir=images_dir))
    try:
        try:
            model_dir, manifest, serving_engine, engine_reason = _model_folder(champion, work / "download")
            if roots_for(serving_engine) != roots_for(champion.engine):  # the registry's engine decides
                requirements = image_context.requirements_text(image_context.closure(roots_for(serving_engine)))
        except model_lib.ModelIntegrityError as exc:  # the same files fail the same way
            raise PermanentImageError(f"{exc}\nNo image was built; the previous image, if any, is unchanged.") from None
        base_image = engine.ensure_base_image(engine.base_image, log=log)
        try:
            inputs = image_context.image_inputs(model_dir, champion.name, str(champion.version), base_image,
                                                dockerfile=dockerfile, serving_dir=serving_dir, requirements=requirements,
                                                files_sha256=manifest, serving_engine=serving_engine,
                                                engine_reason=engine_reason)
        except ContextError as exc:
            raise PermanentImageError(str(exc)) from None
        ref = engine.ref(inputs.tag)
        existing = engine.image(ref)
        runtime, runtime_built = engine.runtime_ref(inputs.runtime_tag), False
        if existing is not None:
            log.info(f"{ref} exists (same model, code, Dockerfile, requirements and base): nothing to build")
            built, seconds, image_id, size = False, 0.0, existing.id, int(existing.attrs.get("Size") or 0)
        else:
            try:
                runtime, runtime_built = _ensure_runtime(engine, inputs, work, log)
                log.info(f"building {ref} for {champion.name} version {champion.version} on {runtime}")
                context_dir = image_context.write_context(inputs, work / "context")
                result = engine.build(context_dir, ref, inputs.build_args(runtime), log=log)
            except ContextError as exc:
                raise PermanentImageError(str(exc)) from None
            except ImageBuildError as exc:  # an offline build fails the same way twice
                raise PermanentImageError(f"{exc}\nThe previous image, if any, is unchanged.", exc.log_tail) from None
            built, seconds, image_id, size = True, result.seconds, result.image_id, result.size_bytes
            log.info(f"built {ref} in {seconds:.0f}s: {size / 1e6:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entry = {"tag": inputs.tag, "hashes": inputs.hashes, "base_image": base_image, "runtime": runtime}

    def remember(recipes: dict) -> dict:
        recipes.pop(recipe, None)
        recipes[recipe] = entry  # newest last
        return dict(list(recipes.items())[-RECIPES_KEPT:])

    _recipes(images_dir).update(remember)
    return {**entry, "built": built, "build_seconds": seconds, "image_id": image_id, "size": size, "downloaded": True,
            "runtime_built": runtime_built}


def _ensure_runtime(engine: ContainerEngine, inputs: image_context.ImageInputs, work: Path, log) -> tuple[str, bool]:
    """The runtime image the API image is built on (docker/api-runtime.Dockerfile) and whether
    it was built now: found by its tag (a hash of the requirements, the base and its
    Dockerfile), else built once. Raises ContextError or ImageBuildError like the API image's build."""
    ref = engine.runtime_ref(inputs.runtime_tag)
    if engine.image(ref) is not None:
        log.info(f"runtime {ref} exists (same requirements, base and runtime Dockerfile): reused")
        return ref, False
    log.info(f"building the runtime {ref} (requirements and base changed, or first build on this engine)")
    context_dir = image_context.write_runtime_context(inputs, work / "runtime-context", image_context.default_wheel_cache(), log)
    result = engine.build(context_dir, ref, inputs.runtime_build_args(), log=log)
    log.info(f"built the runtime {ref} in {result.seconds:.0f}s: {result.size_bytes / 1e6:.0f} MB")
    return ref, True


def _model_folder(champion: Champion, dest: Path) -> tuple[Path, str]:
    """The champion's MLflow model folder, checked against the sha256 manifest registered with
    the version, with the registry name and version recorded in it (`registered_model_meta`,
    which the API reports and the manifest leaves out). Returns (folder, manifest, engine, why
    not ONNX) as the registry records them for the version."""
    folder, _, _ = model_lib.download(model_lib.ModelSource(champion.model_uri, champion.tracking_uri), dest)
    where = f"model {champion.name} version {champion.version}"
    manifest, engine, reason = model_lib.registered_serving(champion.tracking_uri, champion.name, str(champion.version))
    model_lib.verify_files(folder, model_lib.parse_manifest(manifest, where), where)
    meta = folder / "registered_model_meta"
    wanted = {"model_name": champion.name, "model_version": str(champion.version)}
    current = yaml.safe_load(meta.read_text()) if meta.is_file() else None
    if current != wanted:
        meta.write_text(yaml.safe_dump(wanted, sort_keys=True))
    return folder, manifest, engine, reason
