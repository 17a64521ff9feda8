"""The ML phase against an MLflow tracking *server* (http://), not only a sqlite file."""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import requests

from .conftest import make_settings, materialize_ml
from .ml_helpers import registry_for

pytestmark = pytest.mark.service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(tmp_path: Path, *args: str, env: dict | None = None, backend_store_uri: str | None = None) -> Iterator[str]:
    """`mlflow server` on a free loopback port (its workers in a session of their own), its
    store a sqlite file in tmp_path unless `backend_store_uri` names another."""
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", backend_store_uri or f"sqlite:///{tmp_path / 'server.db'}",
            "--workers", "1", *args,
        ],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "ab"), start_new_session=True,
        cwd=tmp_path, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.RequestException:  # not up yet, or slow on a busy machine
                pass
            assert server.poll() is None, f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "mlflow server did not answer in 180 s"
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture
def tracking_server(tmp_path):
    with running_server(tmp_path, "--artifacts-destination", str(tmp_path / "server-artifacts")) as url:
        yield url


def test_phase_runs_against_a_tracking_server(tmp_path, tracking_server):
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        result = materialize_ml(home, instance, MLFLOW_TRACKING_URI=tracking_server)
    selected = result.output_for_node("selected_model")
    settings = make_settings(home, MLFLOW_TRACKING_URI=tracking_server)
    assert settings.tracking_uri == tracking_server
    registry = registry_for(settings)
    assert registry.champion(settings.model_name).version == selected.version
    # artifacts went to the server, not to the local state folder
    assert not (home / "mlflow" / "artifacts").exists() or not any((home / "mlflow" / "artifacts").rglob("MLmodel"))
    assert any((tmp_path / "server-artifacts").rglob("MLmodel"))
    model = registry.load_model(f"models:/{settings.model_name}@champion")
    dataset = result.output_for_node("dataset")
    assert len(model.predict(dataset.xy("test")[0])) == dataset.test.height
    link = result.get_asset_materialization_events()[-1].materialization.metadata["registry"].value
    assert link.startswith(tracking_server)


# -- a team's server: basic auth, and what goes wrong -------------------------------------------
def _first_asset_failure(home: Path, uri: str) -> str:
    """The ML phase against `uri`: the first asset's failure message (nothing else ran)."""
    (home / "dagster").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        result = materialize_ml(home, instance, raise_on_error=False, MLFLOW_TRACKING_URI=uri)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["candidate_models"]
    assert not (home / "mlflow" / "mlflow.db").exists(), "fell back to a local store"
    data = failures[0].step_failure_data
    return (data.user_failure_data.description or "") if data.user_failure_data else data.error.message


@pytest.fixture
def auth_server(tmp_path):
    """A server with MLflow's basic-auth app (admin password generated here), artifacts proxied."""
    password = secrets.token_urlsafe(16)
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # As the tracking_server role configures it: checked passwords cached (never refused ones).
        "auth_cache_ttl_seconds = 60\n")
    with running_server(tmp_path, "--app-name", "basic-auth", "--artifacts-destination", str(tmp_path / "server-artifacts"),
                        env={"MLFLOW_AUTH_CONFIG_PATH": str(ini),
                             # CSRF protection of the auth app's forms: one key per server (generated).
                             "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}) as url:
        yield url, password


def test_a_basic_auth_server_trains_with_credentials_and_names_them_when_refused(tmp_path, auth_server, monkeypatch):
    url, password = auth_server
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    missing = _first_asset_failure(tmp_path / "no-credentials", url)
    assert "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD" in missing and "are not set" in missing

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-" + password)
    refused = _first_asset_failure(tmp_path / "wrong-password", url)
    assert "(user 'admin') were refused" in refused and password not in refused

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        result = materialize_ml(home, instance, MLFLOW_TRACKING_URI=url)
    selected = result.output_for_node("selected_model")
    registry = registry_for(make_settings(home, MLFLOW_TRACKING_URI=url))
    assert registry.champion(selected.name).version == selected.version
    assert any((tmp_path / "server-artifacts").rglob("MLmodel"))
    # Without credentials the server's REST API refuses: the runs really are behind basic auth.
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=10).status_code == 401


def test_an_unreachable_server_or_a_stranger_is_named_by_its_setting(tmp_path):
    dead = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    message = _first_asset_failure(tmp_path / "dead", dead)
    assert message.count("MLFLOW_TRACKING_URI") and "does not answer" in message
    assert time.monotonic() - started < 60, "MLflow's two minutes of retries were not cut short"

    # An HTTP server that is not MLflow's (here: a directory listing on loopback).
    port = _free_port()
    stranger = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        message = _first_asset_failure(tmp_path / "stranger", f"http://127.0.0.1:{port}")
        assert "MLFLOW_TRACKING_URI" in message and "not an MLflow tracking server" in message
    finally:
        stranger.kill()
        stranger.wait()


def test_a_server_whose_bucket_is_missing_fails_naming_the_artifact_store(tmp_path):
    """The server proxies artifacts to an S3 bucket that does not exist (moto's S3 on loopback)."""
    port = _free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port)
        s3 = {"MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
              "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        with running_server(tmp_path, "--artifacts-destination", "s3://absent-bucket/mlflow", env=s3) as url:
            message = _first_asset_failure(tmp_path / "home", url)
    finally:
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait()
    assert "cannot reach its artifact store" in message and "MLFLOW_TRACKING_URI" in message
    assert "NoSuchBucket" in message or "does not exist" in message


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}"
            time.sleep(0.2)
