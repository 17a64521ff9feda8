"""The API image's build contexts and the content tags that name them.

Two images: the runtime (docker/api-runtime.Dockerfile: the pinned serving stack on the base
image, tagged by a hash of the requirements, the base and that Dockerfile) and the API image
on top of it (docker/api.Dockerfile: serving code and model). The API image's tag is a hash
of everything that goes into it: the model (name, version and the bytes of its files), the
serving code, both Dockerfiles, the pinned requirements and the base image. Same inputs, same
tag: an engine that already has the tag needs no build. Different inputs, a new tag: the old
image is never overwritten.

`python -m mlops_assets.image.context MODEL_DIR OUT_DIR` writes both contexts by hand (then
two `docker build`s, printed), with the wheels from this machine's pip.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlops_assets.settings import PROJECT_ROOT

from .requirements import WHEEL_HASHES, closure, hashed_requirements_text, read_hashes, requirements_text, write_hashes

DOCKERFILE = PROJECT_ROOT / "docker" / "api.Dockerfile"
RUNTIME_DOCKERFILE = PROJECT_ROOT / "docker" / "api-runtime.Dockerfile"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # mlops_assets/
SERVING_DIR = PACKAGE_DIR / "serving"
DEFAULT_REPOSITORY = "mlops-api"
RUNTIME_SUFFIX = "-runtime"  # the runtime's repository: the API image's, plus this
CACHE_RECORD = "SHA256SUMS"  # in the wheel cache: the sha256 of each wheel when pip fetched it


class ContextError(RuntimeError):
    """The build context could not be assembled; the message says what to do."""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def hash_files(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def app_files(serving_dir: Path = SERVING_DIR) -> list[tuple[Path, Path]]:
    """(source, path inside app/) of the code the image runs: the serving package and the
    package's __init__ (which imports nothing)."""
    pairs = [(PACKAGE_DIR / "__init__.py", Path("mlops_assets/__init__.py"))]
    pairs += [(f, Path("mlops_assets/serving") / f.relative_to(serving_dir)) for f in _files(serving_dir)]
    return pairs


def serving_code_hash(serving_dir: Path = SERVING_DIR) -> str:
    digest = hashlib.sha256()
    for source, inside in app_files(serving_dir):
        digest.update(str(inside).encode() + b"\0" + hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageInputs:
    """What goes into one image; `tag` is their hash."""

    model_dir: Path
    model_name: str
    model_version: str
    base_image: str
    requirements: str
    dockerfile: Path = DOCKERFILE
    serving_dir: Path = SERVING_DIR
    hashes: dict[str, str] = field(default_factory=dict)
    files_sha256: str = ""  # the model files' manifest: the container checks them against it
    runtime_dockerfile: Path = RUNTIME_DOCKERFILE
    serving_engine: str = "sklearn"  # what runs the model in the container (MLOPS_SERVING_ENGINE)
    engine_reason: str = ""  # why not ONNX (MLOPS_SERVING_ENGINE_REASON)

    @property
    def tag(self) -> str:
        return hashlib.sha256(json.dumps(self.hashes, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def runtime_tag(self) -> str:
        """The runtime image's tag: what it is built from (requirements, base, its Dockerfile)."""
        parts = {key: self.hashes[key] for key in ("runtime_dockerfile", "requirements", "base_image")}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def code_tag(self) -> str:
        """What the image runs, without the model: serving code, both Dockerfiles, requirements
        (which follow the engine's runtime) and base. Two images with the same code tag differ
        only in /opt/model: the `api` role then moves a cluster to the new model through Serve's
        in-place reconfigure instead of new containers (label mlops.serving.code)."""
        parts = {key: self.hashes[key] for key in ("serving_code", "dockerfile", "runtime_dockerfile", "requirements",
                                                   "base_image")}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def runtime_build_args(self) -> dict[str, str]:
        return {"BASE_IMAGE": self.base_image}

    def build_args(self, runtime_image: str) -> dict[str, str]:
        return {
            "RUNTIME_IMAGE": runtime_image,
            "MODEL_NAME": self.model_name,
            "MODEL_VERSION": self.model_version,
            "IMAGE_TAG": self.tag,
            "SERVING_CODE": self.code_tag,
            "MODEL_FILES_SHA256": self.files_sha256,
            "SERVING_ENGINE": self.serving_engine,
            "SERVING_ENGINE_REASON": self.engine_reason,
        }


def image_inputs(
    model_dir: Path,
    model_name: str,
    model_version: str,
    base_image: str,
    dockerfile: Path = DOCKERFILE,
    serving_dir: Path = SERVING_DIR,
    requirements: str | None = None,
    files_sha256: str | None = None,
    runtime_dockerfile: Path = RUNTIME_DOCKERFILE,
    serving_engine: str = "sklearn",
    engine_reason: str = "",
) -> ImageInputs:
    """Hash the inputs (cheap: no wheel is fetched, nothing is copied). `files_sha256` is the
    manifest registered with the model (image/build.py checked the folder against it); by hand,
    the folder's own files are hashed."""
    if not (model_dir / "MLmodel").is_file():
        raise ContextError(f"{model_dir} is not an MLflow model folder (no MLmodel file)")
    for needed in (dockerfile, runtime_dockerfile):
        if not needed.is_file():
            raise ContextError(f"the Dockerfile {needed} is missing")
    requirements = requirements if requirements is not None else requirements_text(closure())
    hashes = {
        "model": f"{model_name}/{model_version}/{hash_files(model_dir, _files(model_dir))}",
        "serving_code": serving_code_hash(serving_dir),
        "dockerfile": hashlib.sha256(dockerfile.read_bytes()).hexdigest(),
        "runtime_dockerfile": hashlib.sha256(runtime_dockerfile.read_bytes()).hexdigest(),
        "requirements": hashlib.sha256(requirements.encode()).hexdigest(),
        "base_image": base_image,
        "serving_engine": f"{serving_engine}\0{engine_reason}",
    }
    if files_sha256 is None:
        from mlops_assets.serving import model as model_lib

        files_sha256 = model_lib.manifest_text(model_lib.files_manifest(model_dir))
    return ImageInputs(model_dir, model_name, model_version, base_image, requirements, dockerfile, serving_dir, hashes,
                       files_sha256, runtime_dockerfile, serving_engine, engine_reason)


def canonicalize(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def pins_of(requirements: str) -> dict[str, str]:
    pins = {}
    for line in requirements.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name] = version
    return pins


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def verified_wheels(pins: dict[str, str], cache_dir: Path, log=None,
                    committed: Path = WHEEL_HASHES) -> dict[str, tuple[Path, str]]:
    """{name: (wheel, sha256)} for every pin, each wheel checked against its recorded sha256:
    the committed WHEEL_HASHES first, else the cache's record, which holds only wheels this
    machine's pip fetched from its index (recorded right after the download). A wheel whose
    bytes differ, or one in the cache that no record names, is refused."""
    record_path = cache_dir / CACHE_RECORD
    record = read_hashes(record_path)
    before = {wheel.name for wheel in cache_dir.glob("*.whl")} if cache_dir.is_dir() else set()
    wheels = ensure_wheels(pins, cache_dir, log)
    fetched = {name for name, wheel in wheels.items() if wheel.name not in before}
    known = read_hashes(committed)
    verified, new = {}, {}
    for name, wheel in wheels.items():
        actual = _sha256(wheel)
        expected = known.get(wheel.name) or record.get(wheel.name)
        if expected is None and name in fetched:
            expected = new[wheel.name] = actual  # just fetched by pip from the index
        if expected is None:
            raise ContextError(f"the wheel {wheel} has no recorded sha256 (in {committed} or {record_path}): this "
                               "pipeline did not fetch it. Delete it and run again, so pip fetches it from the index")
        if actual != expected:
            raise ContextError(f"the wheel {wheel} has sha256 {actual}, not the recorded {expected}: the file was "
                               "changed or replaced. Delete it and run again, so pip fetches it from the index")
        verified[name] = (wheel, actual)
    if new:
        write_hashes(record_path, {**record, **new}, "# sha256 of the wheels pip fetched into this cache (image/context.py)\n")
        if log:
            log.info(f"recorded the sha256 of {len(new)} new wheels in {record_path}"
                     f"{'' if set(new) <= set(known) else f' ({len(set(new) - set(known))} not in {committed.name})'}")
    return verified


def ensure_wheels(pins: dict[str, str], cache_dir: Path, log=None) -> dict[str, Path]:
    """A wheel per pin in `cache_dir`, fetched by this machine's pip (its indexes, cache and
    certificates: the build container then needs no network). Returns {name: wheel}."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    cache_dir.mkdir(parents=True, exist_ok=True)

    def present() -> dict[str, Path]:
        found = {}
        for wheel in cache_dir.glob("*.whl"):
            try:
                name, version, _, _ = parse_wheel_filename(wheel.name)
            except ValueError:
                continue
            if pins.get(str(name)) == str(version):
                found[str(name)] = wheel
        return found

    pins = {str(canonicalize_name(k)): v for k, v in pins.items()}
    # One fetcher at a time: pip writes each wheel in place, and another process (a second
    # test lane, `make run` beside `make test`) must never link a half-written one.
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = present()
        missing = [f"{name}=={version}" for name, version in pins.items() if name not in have]
        if missing:
            if log:
                log.info(f"fetching {len(missing)} wheels into {cache_dir} with this machine's pip")
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                       "--no-deps", "--only-binary=:all:", "--dest", str(cache_dir), *missing]
            result = subprocess.run(command, capture_output=True, text=True)
            have = present()
            still = [m for m in missing if m.partition("==")[0] not in have]
            if result.returncode != 0 or still:
                tail = "\n".join(result.stderr.strip().splitlines()[-10:])
                raise ContextError(f"pip could not fetch the wheels {', '.join(still) or missing}: {tail}\n"
                                   "Check that this machine's pip reaches its package index (pip config list).")
    return have


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _empty(dest: Path, dockerfile: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(dockerfile, dest / "Dockerfile")
    (dest / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")


def write_runtime_context(inputs: ImageInputs, dest: Path, wheel_cache: Path, log=None) -> Path:
    """The runtime's build context in `dest` (created empty): its Dockerfile, the hashed
    requirements and their wheels."""
    _empty(dest, inputs.runtime_dockerfile)
    pins = pins_of(inputs.requirements)
    wheels = verified_wheels(pins, wheel_cache, log)
    hashes = {name: digest for name, (_, digest) in wheels.items()}
    (dest / "requirements.txt").write_text(hashed_requirements_text(
        {name: version for name, version in ((canonicalize(n), v) for n, v in pins.items())}, hashes))
    for name, (wheel, _) in wheels.items():
        # A copy, not a link: the bytes checked are the bytes sent (pip checks them again).
        target = dest / "wheels" / wheel.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel, target)
        if _sha256(target) != hashes[name]:
            raise ContextError(f"the wheel {wheel} changed while it was copied into the build context; run again")
    return dest


def write_context(inputs: ImageInputs, dest: Path) -> Path:
    """The API image's build context in `dest` (created empty): its Dockerfile, app, model."""
    _empty(dest, inputs.dockerfile)
    for source, inside in app_files(inputs.serving_dir):
        _link_or_copy(source, dest / "app" / inside)
    for file in _files(inputs.model_dir):
        _link_or_copy(file, dest / "model" / file.relative_to(inputs.model_dir))
    return dest


def default_wheel_cache() -> Path:
    """Shared by `make run` and the tests of this machine, beside the offline base's cache."""
    from mlops_assets.offline_base import default_cache_dir

    return default_cache_dir() / "wheels"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write the API image's build context by hand.")
    parser.add_argument("model_dir", type=Path, help="an MLflow model folder (MLmodel, model.skops)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", default="model")
    parser.add_argument("--version", default="0")
    parser.add_argument("--base-image", default="python:3.11-slim")
    args = parser.parse_args(argv)
    inputs = image_inputs(args.model_dir, args.name, args.version, args.base_image)
    runtime = f"{DEFAULT_REPOSITORY}{RUNTIME_SUFFIX}:{inputs.runtime_tag}"
    write_runtime_context(inputs, args.out_dir / "runtime", default_wheel_cache())
    write_context(inputs, args.out_dir / "api")
    for image, folder, build_args in ((runtime, "runtime", inputs.runtime_build_args()),
                                      (f"{DEFAULT_REPOSITORY}:{inputs.tag}", "api", inputs.build_args(runtime))):
        arguments = " ".join(f"--build-arg {k}={shlex.quote(v)}" for k, v in build_args.items())
        print(f"docker build {arguments} -t {image} {args.out_dir / folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
