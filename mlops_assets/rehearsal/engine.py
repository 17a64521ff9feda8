"""The Docker-compatible engine for tests: whatever `scripts/setup_podman.sh` finds or sets up
(the user's Docker, DOCKER_HOST, or Podman's service that scripts/setup_podman.sh starts). One call per test
session; tests that need an engine use `docker_host()` or `docker_client()`."""

from __future__ import annotations

import functools
import os
import subprocess

from mlops_assets.settings import PROJECT_ROOT

SETUP_PODMAN = PROJECT_ROOT / "scripts" / "setup_podman.sh"


class NoEngineError(RuntimeError):
    """No Docker-compatible engine answers and none could be set up."""


@functools.lru_cache(maxsize=1)
def docker_host() -> str:
    """The DOCKER_HOST value of an engine that answers; sets Podman up when needed."""
    result = subprocess.run(["bash", str(SETUP_PODMAN)], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise NoEngineError(result.stderr.strip() or result.stdout.strip())
    if "nothing to set up" in result.stderr:  # an engine of the user's already answers
        if "docker.sock" in result.stderr:
            return "unix:///var/run/docker.sock"
        return os.environ["DOCKER_HOST"]
    return subprocess.run(["bash", str(SETUP_PODMAN), "--print-docker-host"],
                          capture_output=True, text=True, check=True).stdout.strip()


def docker_client(timeout: int = 300):
    import docker

    return docker.DockerClient(base_url=docker_host(), timeout=timeout)
