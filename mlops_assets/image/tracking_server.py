"""The MLflow tracking server's two images (issue 14), built on the control machine and shipped
to the monitoring host as archives, like the API's (the `tracking_server` role loads them):

- the tracking server (docker/tracking-server.Dockerfile and its entrypoint): `mlflow server`
  with its basic-auth app, boto3 (S3 artifacts) and psycopg2 (PostgreSQL stores), installed from the project's
  pinned, hash-checked wheels (image/context.py `verified_wheels`) on the same Debian base as
  the API runtime. Tag: a hash of the pinned requirements, the base image, the Dockerfile
  and the entrypoint.
- PostgreSQL (docker/postgres.Dockerfile): Debian's `postgresql-15` on the offline Debian base,
  with the official `postgres` image's interface (uid 999, PGDATA volume, initdb on first
  start from POSTGRES_PASSWORD_FILE). Tag: a hash of its Dockerfile, entrypoint and base.

Same inputs, same tag: an engine that already has the tag builds nothing.

`python -m mlops_assets.image.tracking_server [--save DIR]` builds both on this machine's
engine (the rehearsal's Podman when no Docker answers) and prints their references and sizes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlops_assets.settings import PROJECT_ROOT

from .context import ContextError, _sha256, canonicalize, default_wheel_cache, pins_of, verified_wheels
from .requirements import closure, hashed_requirements_text, requirements_text

DOCKERFILE = PROJECT_ROOT / "docker" / "tracking-server.Dockerfile"
ENTRYPOINT = PROJECT_ROOT / "docker" / "tracking-server-entrypoint.sh"
POSTGRES_DOCKERFILE = PROJECT_ROOT / "docker" / "postgres.Dockerfile"
POSTGRES_ENTRYPOINT = PROJECT_ROOT / "docker" / "postgres-entrypoint.sh"
REPOSITORY = "localhost/mlops-tracking-server"
POSTGRES_REPOSITORY = "localhost/mlops-postgres"
# What the container runs: `mlflow server` with the basic-auth app (Flask-WTF: the [auth]
# extra), S3 artifacts through boto3, PostgreSQL stores through psycopg2 (the URIs say
# postgresql+psycopg2://: SQLAlchemy 2.1 would pick psycopg 3 for a plain postgresql://).
ROOTS = ("mlflow[auth]", "boto3", "psycopg2-binary")
# What `mlflow` declares for its client side (model flavors, plots, dataset formats) and the
# server never imports: measured with `mlflow server` (3.17, basic-auth app, proxied
# artifacts) run with these modules made unimportable while a client logged runs, metrics and
# artifacts, registered a model, set an alias, downloaded and loaded it, and created a user.
# numpy and pandas stay (the server imports them at start). Leaving these out (and pillow,
# fonttools, joblib... which only they need) halves the image.
LEAVE_OUT = ("scikit-learn", "scipy", "pyarrow", "matplotlib", "skops")


@dataclass(frozen=True)
class BuiltImage:
    reference: str  # repository:tag in the engine
    built: bool  # False: the engine had the tag already
    size_bytes: int
    seconds: float


def requirements(roots: tuple[str, ...] = ROOTS) -> str:
    """The server's pinned closure, at this environment's versions (setup.py's mlflow pin),
    without what it never imports (LEAVE_OUT)."""
    return requirements_text(closure(roots, leave_out=LEAVE_OUT))


def _digest(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def tracking_server_tag(base_image: str, requirements_txt: str, dockerfile: Path = DOCKERFILE,
                        entrypoint: Path = ENTRYPOINT) -> str:
    return _digest({"dockerfile": hashlib.sha256(dockerfile.read_bytes()).hexdigest(),
                    "entrypoint": hashlib.sha256(entrypoint.read_bytes()).hexdigest(),
                    "requirements": hashlib.sha256(requirements_txt.encode()).hexdigest(), "base_image": base_image})


def postgres_tag(base_image: str, dockerfile: Path = POSTGRES_DOCKERFILE, entrypoint: Path = POSTGRES_ENTRYPOINT) -> str:
    return _digest({"dockerfile": hashlib.sha256(dockerfile.read_bytes()).hexdigest(),
                    "entrypoint": hashlib.sha256(entrypoint.read_bytes()).hexdigest(), "base_image": base_image})


def write_tracking_server_context(requirements_txt: str, dest: Path, wheel_cache: Path, log=None,
                                  dockerfile: Path = DOCKERFILE) -> Path:
    """The build context in `dest` (created empty): the Dockerfile, its entrypoint,
    requirements.txt with each wheel's sha256, and the wheels themselves, each checked against
    its recorded hash."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(dockerfile, dest / "Dockerfile")
    shutil.copy2(ENTRYPOINT, dest / "entrypoint.sh")
    (dest / "entrypoint.sh").chmod(0o755)
    pins = {canonicalize(name): version for name, version in pins_of(requirements_txt).items()}
    wheels = verified_wheels(pins, wheel_cache, log)
    hashes = {name: digest for name, (_, digest) in wheels.items()}
    (dest / "requirements.txt").write_text(hashed_requirements_text(pins, hashes))
    (dest / "wheels").mkdir()
    for name, (wheel, _) in wheels.items():
        target = dest / "wheels" / wheel.name
        shutil.copyfile(wheel, target)  # a copy: the bytes checked are the bytes sent
        if _sha256(target) != hashes[name]:
            raise ContextError(f"the wheel {wheel} changed while it was copied into the build context; run again")
    return dest


def _existing(engine, reference: str):
    try:
        return engine.images.get(reference)
    except Exception:  # docker.errors.ImageNotFound
        return None


def _build(engine, reference: str, context_dir: Path, build_args: dict[str, str], log=None) -> BuiltImage:
    started = time.monotonic()
    if log:
        log.info(f"building {reference}")
    image, _ = engine.images.build(path=str(context_dir), tag=reference, buildargs=build_args, rm=True,
                                   network_mode="host")
    seconds = time.monotonic() - started
    size = int(image.attrs.get("Size") or 0)
    if log:
        log.info(f"built {reference} in {seconds:.0f}s: {size / 1e6:.0f} MB")
    return BuiltImage(reference, True, size, seconds)


def build_tracking_server_image(engine, base_image: str | None = None, *, repository: str = REPOSITORY,
                                wheel_cache: Path | None = None, log=None) -> BuiltImage:
    """The tracking server's image on `engine` (a docker SDK client), built only when its tag is absent."""
    from mlops_assets.offline_base import BASE_IMAGE, ensure_base_image

    if base_image is None:
        ensure_base_image(engine)
        base_image = BASE_IMAGE
    requirements_txt = requirements()
    reference = f"{repository}:{tracking_server_tag(base_image, requirements_txt)}"
    found = _existing(engine, reference)
    if found is not None:
        return BuiltImage(reference, False, int(found.attrs.get("Size") or 0), 0.0)
    with tempfile.TemporaryDirectory(prefix="tracking-server-") as work:
        context_dir = write_tracking_server_context(requirements_txt, Path(work) / "context",
                                                    wheel_cache or default_wheel_cache(), log)
        return _build(engine, reference, context_dir, {"BASE_IMAGE": base_image}, log)


def build_postgres_image(engine, base_image: str | None = None, *, repository: str = POSTGRES_REPOSITORY,
                         log=None) -> BuiltImage:
    """The PostgreSQL image on `engine`, built only when its tag is absent."""
    from mlops_assets.offline_base import BASE_IMAGE, ensure_base_image

    if base_image is None:
        ensure_base_image(engine)
        base_image = BASE_IMAGE
    reference = f"{repository}:{postgres_tag(base_image)}"
    found = _existing(engine, reference)
    if found is not None:
        return BuiltImage(reference, False, int(found.attrs.get("Size") or 0), 0.0)
    with tempfile.TemporaryDirectory(prefix="postgres-") as work:
        context_dir = Path(work)
        shutil.copy2(POSTGRES_DOCKERFILE, context_dir / "Dockerfile")
        shutil.copy2(POSTGRES_ENTRYPOINT, context_dir / POSTGRES_ENTRYPOINT.name)
        (context_dir / POSTGRES_ENTRYPOINT.name).chmod(0o755)
        return _build(engine, reference, context_dir, {"BASE_IMAGE": base_image}, log)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging

    from mlops_assets.rehearsal.engine import docker_client
    from mlops_assets.rehearsal.images import save_archive

    parser = argparse.ArgumentParser(description="Build the tracking server's and PostgreSQL's images.")
    parser.add_argument("--save", type=Path, help="also save each as a docker-archive in this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("tracking_server_image")
    engine = docker_client(timeout=1800)
    for image in (build_postgres_image(engine, log=log), build_tracking_server_image(engine, log=log)):
        line = f"{image.reference} {image.size_bytes / 1e6:.0f} MB ({'built in %.0fs' % image.seconds if image.built else 'present'})"
        if args.save:
            archive = save_archive(engine, image.reference, args.save)
            line += f" -> {archive} ({archive.stat().st_size / 1e6:.0f} MB)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
