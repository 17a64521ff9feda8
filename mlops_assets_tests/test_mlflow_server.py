"""The ML phase against an MLflow tracking *server* (http://), not only a sqlite file."""

import os
import signal
import socket
import subprocess
import sys
import time
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


@pytest.fixture
def tracking_server(tmp_path):
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [
            str(bin_dir / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
            "--workers", "1",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
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
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not answer in 180 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


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
