"""The `tracking_server` asset's resource: the store's address without secrets, and a data
version that follows the address (a new store means training there)."""

import os

import dagster as dg
import pytest

from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.tracking import ConfiguredStore, shown_uri, store_kind

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("uri, shown, kind", [
    ("sqlite:////srv/mlops/mlflow/mlflow.db", "sqlite:////srv/mlops/mlflow/mlflow.db", "sqlite"),
    ("postgresql://mlflow:s3cret@db.internal:5432/mlflow", "postgresql://mlflow:***@db.internal:5432/mlflow", "database"),
    ("postgresql+psycopg://mlflow:s3cret@/mlflow?host=/run/postgresql", "postgresql+psycopg://mlflow:***@/mlflow?host=%2Frun%2Fpostgresql", "database"),
    ("https://alice:s3cret@mlflow.example.org/", "https://mlflow.example.org/", "server"),
    ("http://10.0.1.5:5000", "http://10.0.1.5:5000", "server"),
])
def test_the_address_never_shows_a_password(uri, shown, kind):
    assert shown_uri(uri) == shown and "s3cret" not in shown_uri(uri)
    assert store_kind(uri) == kind


def test_the_data_version_is_the_address_and_a_new_store_changes_it(tmp_path):
    def ensure(uri):
        store = ConfiguredStore(mlflow=MlflowRegistry(tracking_uri=uri, artifact_root=str(tmp_path / "artifacts")))
        return store.ensure({}, log=dg.get_dagster_logger())

    first = ensure(f"sqlite:///{tmp_path / 'a.db'}")
    assert (tmp_path / "a.db").exists(), "the first call creates and migrates the sqlite store"
    assert ensure(f"sqlite:///{tmp_path / 'a.db'}").data_version == first.data_version
    other = ensure(f"sqlite:///{tmp_path / 'b.db'}")
    assert other.data_version != first.data_version
    assert first.store.kind == "sqlite" and first.store.deployed_by == "nothing"
    assert first.metadata["store"] == f"sqlite:///{tmp_path / 'a.db'}"


@pytest.mark.parametrize("target, uri, expected", [
    ("local", None, "ConfiguredStore"),
    ("sim", None, "ServerOnMonitoringHost"),
    ("aws", None, "ServerOnMonitoringHost"),
    ("sim", "http://mlflow.team.internal:5000", "ConfiguredStore"),
    ("aws", "postgresql://mlflow@db.internal/mlflow", "ConfiguredStore"),
])
def test_sim_and_aws_deploy_a_server_unless_the_user_names_a_store(tmp_path, target, uri, expected):
    from mlops_assets.settings import load_settings
    from mlops_assets.targets import resources_for

    env = {"MLOPS_HOME": str(tmp_path), "MLOPS_TARGET": target, **({"MLFLOW_TRACKING_URI": uri} if uri else {})}
    resources = resources_for(load_settings(env))
    assert type(resources["tracking_store"]).__name__ == expected
    record = resources["mlflow"].server_record
    if expected == "ServerOnMonitoringHost":
        assert record == str(tmp_path / "ansible" / target / "tracking-server.json")
        assert resources["tracking_store"].record_file == record
        assert resources["tracking_store"].mlflow is resources["mlflow"]
    else:
        assert record is None and resources["mlflow"].uri == (uri or f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")


def test_a_deployed_server_is_read_from_its_record_and_never_replaced_by_a_local_store(tmp_path, monkeypatch):
    from mlops_assets.state import StateFile

    record = tmp_path / "tracking-server.json"
    local = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowRegistry(tracking_uri=local, server_record=str(record))
    with pytest.raises(dg.Failure) as missing:
        registry.uri
    assert "Materialize tracking_server" in missing.value.description and str(record) in missing.value.description
    monkeypatch.delenv("MLOPS_TEST_TRACKING_PASSWORD", raising=False)
    StateFile(record).write({"url": "http://172.31.0.5:5000", "username": "admin",
                             "password_env": "MLOPS_TEST_TRACKING_PASSWORD", "password_file": str(tmp_path / "password")})
    with pytest.raises(dg.Failure) as no_password:
        registry.uri
    assert no_password.value.description.startswith("MLOPS_TEST_TRACKING_PASSWORD: ")
    assert not (tmp_path / "mlflow.db").exists()
    (tmp_path / "password").write_text("generated-password-1\n")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone-else")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-this-one")
    assert registry.uri == "http://172.31.0.5:5000" and registry.ui == "http://172.31.0.5:5000"
    # MLflow's client reads its basic-auth credentials from these: the server's user, its password.
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "generated-password-1"
    monkeypatch.setenv("MLOPS_TEST_TRACKING_PASSWORD", "from-the-environment")
    fresh = MlflowRegistry(tracking_uri=local, server_record=str(record))
    assert fresh.uri == "http://172.31.0.5:5000" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "from-the-environment"
    assert fresh.model_version_url("m", "3") == "http://172.31.0.5:5000/#/models/m/versions/3"
