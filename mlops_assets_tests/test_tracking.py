"""The `tracking_server` asset's resource: the store's address without secrets, and a data
version that follows the address (a new store means training there)."""

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
