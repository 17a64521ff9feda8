"""A Docker-compatible container engine, wrapped once: build, inspect, save, push.

Talks the Docker Engine API through the Python `docker` SDK to whatever engine the user has:
the configured `docker_host`, else DOCKER_HOST, else Docker's own socket, else the Podman
service that scripts/setup_podman.sh starts (DOCKER_HOST=unix:///run/mlops-podman/podman.sock).
When none answers, the error says how to get one.

Pushing: to `registry` (for example an ECR registry `ACCOUNT.dkr.ecr.REGION.amazonaws.com`);
for ECR the login token comes from boto3 with the usual AWS credentials.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

PODMAN_DOCKER_HOST = "unix:///run/mlops-podman/podman.sock"  # scripts/setup_podman.sh
DOCKER_SOCKET = "unix:///var/run/docker.sock"

HOW_TO_GET_AN_ENGINE = (
    "Get one of: Docker Engine (https://docs.docker.com/engine/install/); or, as root on "
    "Debian/Ubuntu, `bash scripts/setup_podman.sh` (`make run` calls it), which installs Podman and "
    f"serves its Docker-compatible API on {PODMAN_DOCKER_HOST}; or point DOCKER_HOST at any engine socket."
)


class EngineUnavailableError(RuntimeError):
    """No Docker-compatible engine answers."""


class ImageBuildError(RuntimeError):
    """The engine refused the build; `log_tail` holds the builder's last lines."""

    def __init__(self, message: str, log_tail: list[str]) -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    image_id: str
    size_bytes: int
    seconds: float
    log_lines: int


def saved_name(tags: list[str], ref: str) -> str | None:
    """The name a `docker save` of `ref` should carry (a `docker load` gives the image that
    name): `ref` itself when the image has that tag, else the engine's qualified form of it
    (Podman names short references localhost/NAME:TAG); None when neither. Never simply the
    image's first tag: an image built under a short name too also carries
    docker.io/library/NAME, which a host's Docker loads as NAME, another image."""
    return ref if ref in tags else next((tag for tag in tags if tag.endswith("/" + ref)), None)


class ContainerEngine(dg.ConfigurableResource):
    """The engine that builds the API image (and pushes it where a registry is configured)."""

    docker_host: str | None = Field(
        default=None, description="Engine API address; default: DOCKER_HOST, Docker's socket, Podman's (setup_podman.sh)."
    )
    repository: str = Field(default="mlops-api", description="Local image repository (name) of the API image.")
    runtime_repository: str = Field(
        default="", description="Local repository of the runtime image the API images are built on "
                                "(default: `repository` plus `-runtime`).")
    registry: str | None = Field(
        default=None, description="Registry to push to (e.g. ACCOUNT.dkr.ecr.REGION.amazonaws.com); none: no push."
    )
    registry_repository: str | None = Field(default=None, description="Repository in the registry (default: `repository`).")
    aws_region: str | None = Field(default=None, description="ECR region (default: read from the registry address).")
    timeout_s: int = Field(default=1800, description="Engine API timeout (a cold build takes minutes).")
    base_image: str = Field(
        default="python:3.11-slim",
        description="BASE_IMAGE of docker/api.Dockerfile; when it can be neither found nor pulled, the offline "
        "Debian base (mlops_assets/offline_base.py) is built and used instead.",
    )
    required: bool = Field(
        default=True, description="No engine fails the asset (container targets); False: a labelled skip (local)."
    )
    save_archive: bool = Field(default=False, description="Also `docker save` the image into images_dir.")
    images_dir: str = Field(default=".mlops/images", description="Archives and the image recipes record (MLOPS_HOME/images).")

    _last_error: str | None = PrivateAttr(default=None)
    _reachable: str | None = PrivateAttr(default=None)  # found once per resource instance (one step)

    # -- connection ----------------------------------------------------------------------------
    def candidates(self) -> list[str]:
        if self.docker_host:
            return [self.docker_host]
        found = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else []
        return [*found, *(h for h in (DOCKER_SOCKET, PODMAN_DOCKER_HOST) if h not in found)]

    def reachable_host(self) -> str | None:
        """The first candidate address whose engine answers a ping (None: no engine). Once
        one answered, later calls of this step use it without asking again."""
        import docker

        if self._reachable is not None:
            return self._reachable
        for host in self.candidates():
            if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
                continue
            # A busy engine (an import or a save in progress on a loaded machine) may answer
            # slowly: a few tries before calling it absent.
            for attempt in range(3):
                try:
                    client = docker.DockerClient(base_url=host, timeout=30)
                    try:
                        if client.ping():
                            self._reachable = host
                            return host
                    finally:
                        client.close()
                except Exception as exc:
                    self._last_error = f"{host}: {type(exc).__name__}: {str(exc)[:300]}"
                    time.sleep(1 + attempt)
        return None

    def unavailable_message(self) -> str:
        """Why no engine answers, and how to get one."""
        last = f"; last error {self._last_error}" if self._last_error else ""
        return f"no Docker-compatible engine answers (tried {', '.join(self.candidates())}{last}). {HOW_TO_GET_AN_ENGINE}"

    @contextlib.contextmanager
    def connected(self):
        """A client of the engine, closed afterwards."""
        client = self.client()
        try:
            yield client
        finally:
            client.close()

    def client(self):
        import docker

        host = self.reachable_host()
        if host is None:
            raise EngineUnavailableError(
                f"no Docker-compatible engine answers (tried {', '.join(self.candidates())}"
                f"{'; last error ' + self._last_error if self._last_error else ''}). {HOW_TO_GET_AN_ENGINE}"
            )
        return docker.DockerClient(base_url=host, timeout=self.timeout_s)

    # -- images --------------------------------------------------------------------------------
    def ref(self, tag: str) -> str:
        return f"{self.repository}:{tag}"

    def runtime_ref(self, tag: str) -> str:
        """The API image's runtime (docker/api-runtime.Dockerfile) in this engine: in
        `runtime_repository`, by default the repository's name plus `-runtime`. Kept when API
        images are removed: it is their cache."""
        from mlops_assets.image.context import RUNTIME_SUFFIX

        return f"{self.runtime_repository or self.repository + RUNTIME_SUFFIX}:{tag}"

    def image(self, ref: str):
        """The engine's image `ref`, or None."""
        import docker

        with self.connected() as client:
            try:
                return client.images.get(ref)
            except docker.errors.ImageNotFound:
                return None

    def exists(self, ref: str) -> bool:
        return self.image(ref) is not None

    def ensure_base_image(self, preferred: str, log=None) -> str:
        """`preferred` if the engine has it or can pull it; else the offline Debian base
        (debootstrapped and imported; needs root), for machines where no registry answers.

        A base from a registry is returned by digest (`name@sha256:...`, what the engine pulled),
        so the build uses those exact bytes and the image's tag and record name them; a
        `name@sha256:...` preference is pulled and used by that digest only."""
        import docker

        from mlops_assets import offline_base

        with self.connected() as client:
            try:
                return pinned_by_digest(preferred, client.images.get(preferred))
            except docker.errors.ImageNotFound:
                pass
            try:
                repository, tag = split_reference(preferred)
                client.images.pull(repository, tag=tag)
                return pinned_by_digest(preferred, client.images.get(preferred))
            except docker.errors.APIError as exc:
                if log:  # expected where no registry answers: info, not a warning on every run
                    log.info(f"cannot pull {preferred} ({str(exc)[:200]}); using the offline Debian base instead")
            try:
                tag, report = offline_base.ensure_base_image(client)
            except offline_base.OfflineBaseError as exc:
                raise EngineUnavailableError(
                    f"no base image: {preferred} cannot be pulled (no registry answers) and the offline base "
                    f"could not be built: {exc}"
                ) from None
            if log and report.built:
                log.info(f"imported the offline base {tag} in {report.seconds:.1f}s")
            return tag

    def build(self, context_dir: Path, ref: str, build_args: dict[str, str], log=None, progress_every_s: float = 5.0) -> BuiltImage:
        """Build `context_dir` into the image reference `ref` only (no other tag is touched),
        streaming the builder's lines to `log` (debug; a progress line at info every few seconds)."""
        tail: deque[str] = deque(maxlen=40)
        lines = 0
        started = last_progress = time.monotonic()
        error = None
        with self.connected() as client:
            try:
                stream = client.api.build(
                    path=str(context_dir), tag=ref, buildargs=build_args, rm=True, forcerm=True, decode=True, pull=False
                )
                for chunk in stream:
                    if "error" in chunk or "errorDetail" in chunk:
                        error = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                        tail.append(str(error))
                        continue
                    for line in str(chunk.get("stream") or chunk.get("status") or "").splitlines():
                        if not line.strip():
                            continue
                        lines += 1
                        tail.append(line)
                        if log:
                            log.debug(line)
                            now = time.monotonic()
                            if line.lstrip().startswith(("STEP", "[", "Step")) or now - last_progress > progress_every_s:
                                log.info(f"build {now - started:5.0f}s: {line[:200]}")
                                last_progress = now
            except Exception as exc:  # the engine gave up (API error, broken stream)
                error = error or f"{type(exc).__name__}: {exc}"
                tail.append(str(exc))
            seconds = time.monotonic() - started
            try:
                image = client.images.get(ref)
            except Exception:
                image = None
            if error or image is None:
                raise ImageBuildError(
                    f"building {ref} failed after {seconds:.0f}s: {error or 'the engine reported no image'}\n"
                    "last lines of the build log:\n" + "\n".join(tail),
                    list(tail),
                )
            return BuiltImage(ref, image.id, int(image.attrs.get("Size") or 0), seconds, lines)

    def save(self, ref: str, archive: Path) -> Path:
        """`docker save` of `ref` into `archive` (written beside, then renamed: never half)."""
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".partial")
        with self.connected() as client:
            image = client.images.get(ref)
            named = saved_name(image.tags, ref) or ref
            with open(partial, "wb") as handle:
                for chunk in image.save(named=named):
                    handle.write(chunk)
        partial.replace(archive)
        return archive

    # -- registry ------------------------------------------------------------------------------
    def remote_ref(self, tag: str) -> str:
        if not self.registry:
            raise ValueError("no registry configured")
        return f"{self.registry.rstrip('/')}/{self.registry_repository or self.repository}:{tag}"

    def _auth_config(self) -> dict[str, str] | None:
        """ECR: a login token from boto3 (the usual AWS credentials chain). Other registries:
        the engine's own credentials (docker login)."""
        registry = self.registry or ""
        if ".dkr.ecr." not in registry or not registry.endswith(".amazonaws.com"):
            return None
        import boto3

        region = self.aws_region or registry.split(".dkr.ecr.")[1].split(".")[0]
        answer = boto3.client("ecr", region_name=region).get_authorization_token()
        token = answer["authorizationData"][0]["authorizationToken"]
        username, password = base64.b64decode(token).decode().split(":", 1)
        return {"username": username, "password": password}

    def push(self, tag: str, log=None) -> str:
        """Tag `repository:tag` as `registry/repository:tag` (a new name for the same image;
        nothing else is re-tagged) and push it. Returns the remote reference."""
        remote = self.remote_ref(tag)
        repository, _, remote_tag = remote.rpartition(":")
        with self.connected() as client:
            client.images.get(self.ref(tag)).tag(repository, remote_tag)
            errors = []
            for chunk in client.api.push(repository, tag=remote_tag, auth_config=self._auth_config(), stream=True, decode=True):
                if "error" in chunk:
                    errors.append(chunk["error"])
                elif log and chunk.get("status") and not chunk.get("progressDetail"):
                    log.debug(f"push: {chunk['status']}")
        if errors:
            raise ImageBuildError(f"pushing {remote} failed: {errors[-1]}", errors)
        return remote


def split_reference(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference, for the SDK's pull:
    `python:3.11-slim` -> (python, 3.11-slim); `host:5000/x` -> (host:5000/x, latest);
    `python:3.11-slim@sha256:abc` -> (python, sha256:abc)."""
    if "@" in ref:
        name, _, digest = ref.partition("@")
        last = name.split("/")[-1]
        return (name.rpartition(":")[0] if ":" in last else name), digest
    last = ref.split("/")[-1]
    if ":" in last:
        repository, _, tag = ref.rpartition(":")
        return repository, tag
    return ref, "latest"


def pinned_by_digest(preferred: str, image) -> str:
    """`preferred` as `repository@sha256:...` when the engine knows the registry digest it was
    pulled by (a registry image); unchanged for a digest reference or a local-only image."""
    repository, _ = split_reference(preferred)
    if "@sha256:" in preferred or repository.startswith("localhost/"):  # pinned already, or no registry
        return preferred
    digests = list((image.attrs or {}).get("RepoDigests") or [])
    short = repository.split("/")[-1]
    for digest in digests:
        name = digest.partition("@")[0]
        if name == repository or name.endswith(f"/{repository}") or name.endswith(f"/library/{short}") and "/" not in repository:
            return f"{repository}@{digest.partition('@')[2]}"
    return preferred
