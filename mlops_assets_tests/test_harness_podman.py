"""The container half of the offline platform: Podman's Docker-compatible service and the
offline Debian base image (FACTS.md, "Containers without a Docker engine")."""

import subprocess
import time

import pytest

from mlops_assets.offline_base import BASE_IMAGE, ensure_base_image
from mlops_assets.rehearsal import engine as engine_setup
from mlops_assets.rehearsal.engine import SETUP_PODMAN

pytestmark = [pytest.mark.stack, pytest.mark.root]


@pytest.fixture(scope="module")
def docker_host() -> str:
    """The engine `make run` uses: set up (idempotently) by scripts/setup_podman.sh."""
    return engine_setup.docker_host()


@pytest.fixture(scope="module")
def engine(docker_host):
    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=120)
    yield client
    client.close()


def test_engine_answers_through_the_docker_sdk(engine, docker_host):
    assert engine.ping()
    assert engine.version()["ApiVersion"]
    # A second run of the script only checks, and says which DOCKER_HOST to use.
    again = subprocess.run(["bash", str(SETUP_PODMAN)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "DOCKER_HOST=" in again.stderr or "nothing to set up" in again.stderr
    assert "starting" not in again.stderr


def test_offline_base_image_builds_and_runs_python(engine, record_property):
    started = time.monotonic()
    tag, report = ensure_base_image(engine)
    record_property("base_image_s", round(time.monotonic() - started, 1))
    record_property("base_image_mb", round(report.size_bytes / 1e6))
    assert tag == BASE_IMAGE
    output = engine.containers.run(tag, ["python3", "-c", "print(1)"], remove=True, network_mode="none")
    assert output.strip() == b"1"
    # pip and venv are there for the API image's dependencies.
    output = engine.containers.run(tag, ["sh", "-c", "python3 -m venv /tmp/v && /tmp/v/bin/pip --version"],
                                   remove=True, network_mode="none")
    assert b"pip" in output
    # Cached: asking again imports nothing.
    _, again = ensure_base_image(engine)
    assert not again.built
