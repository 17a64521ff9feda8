"""State on PostgreSQL for the local target (docs/operations.md, "State on PostgreSQL"): with
MLOPS_DAGSTER_POSTGRES_URL and MLFLOW_TRACKING_URI naming databases of a PostgreSQL server,
`cli run` keeps Dagster's runs and event logs and MLflow's runs and registry there, nothing in
sqlite, and a second run finds nothing to do. The server is a throwaway cluster of this module:
Debian's binaries (scripts/setup_postgres.sh installs them), run as the `postgres` user, on a Unix
socket in a private folder and no TCP port."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parent.parent


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), **env}
    for name in ("MLFLOW_TRACKING_URI", "MLOPS_DAGSTER_POSTGRES_URL"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase", *args], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway cluster with two fresh databases, `dagster` and `mlflow`."""
    from .postgres_cluster import throwaway_cluster

    if os.geteuid() != 0:
        if os.environ.get("MLOPS_CI"):
            pytest.fail("this test needs root (it runs PostgreSQL as the postgres user); CI runs as root")
        pytest.skip("needs root: the cluster runs as the postgres user")
    with throwaway_cluster() as cluster:
        cluster.create("dagster")
        cluster.create("mlflow")
        yield cluster


def test_the_ml_phase_keeps_its_state_in_postgresql_and_a_second_run_finds_nothing_to_do(postgres, tmp_path):
    home = tmp_path / "home"
    env = {"MLOPS_DAGSTER_POSTGRES_URL": postgres.url("dagster"), "MLFLOW_TRACKING_URI": postgres.url("mlflow")}
    cold = _cli(home, **env)
    assert cold.returncode == 0, cold.stdout[-3000:] + cold.stderr[-3000:]
    assert "ml_phase: succeeded" in cold.stdout, cold.stdout[-3000:]
    again = _cli(home, **env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]

    # Dagster: the runs are PostgreSQL rows; DAGSTER_HOME holds no sqlite run or event storage,
    # and its dagster.yaml names the variable, not the URL.
    statuses = [status for (status,) in postgres.query("dagster", "SELECT status FROM runs")]
    assert statuses and set(statuses) == {"SUCCESS"}, statuses
    materialized = {key for (key,) in postgres.query("dagster", "SELECT asset_key FROM asset_keys")}
    assert {'["dataset"]', '["candidate_models"]', '["selected_model"]'} <= materialized, materialized
    assert not list((home / "dagster").rglob("*.db")), list((home / "dagster").rglob("*.db"))
    dagster_yaml = (home / "dagster" / "dagster.yaml").read_text()
    assert "env: MLOPS_DAGSTER_POSTGRES_URL" in dagster_yaml and "postgresql://" not in dagster_yaml

    # MLflow: the candidate runs, the registered version and the champion alias are rows in the
    # mlflow database; no sqlite store was created.
    from mlops_assets.settings import load_settings

    model = load_settings({"MLOPS_HOME": str(home)}).model_name
    versions = postgres.query("mlflow", f"SELECT version FROM model_versions WHERE name = '{model}'")
    aliases = postgres.query("mlflow", f"SELECT alias, version FROM registered_model_aliases WHERE name = '{model}'")
    assert versions and ("champion", max(v for (v,) in versions)) in aliases, (versions, aliases)
    candidate_runs = postgres.query("mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0][0]
    assert candidate_runs >= 3, candidate_runs
    assert not (home / "mlflow" / "mlflow.db").exists()


def test_an_unreachable_or_wrong_postgresql_setting_fails_naming_it(tmp_path):
    home = tmp_path / "home"
    absent = tmp_path / "no-server-here"
    absent.mkdir()
    unreachable = _cli(home, MLOPS_DAGSTER_POSTGRES_URL=f"postgresql://postgres@/dagster?host={absent}")
    assert unreachable.returncode == 2, unreachable.stdout[-2000:] + unreachable.stderr[-2000:]
    assert "MLOPS_DAGSTER_POSTGRES_URL: Dagster cannot open its storage" in unreachable.stderr, unreachable.stderr[-2000:]
    # Nothing fell back to sqlite: no Dagster storage was created in DAGSTER_HOME.
    assert not list((home / "dagster").rglob("*.db"))

    # The MLflow store likewise: the first asset that needs it fails in seconds (MLflow's own
    # engine would retry for about 100 s), naming the setting, the password hidden.
    mlflow_home = tmp_path / "mlflow-home"
    no_store = _cli(mlflow_home, MLFLOW_TRACKING_URI=f"postgresql://postgres:hunter2@/mlflow?host={absent}")
    assert no_store.returncode == 1
    assert ("failed step tracking_server: dagster._core.definitions.events.Failure: MLFLOW_TRACKING_URI "
            "(postgresql://postgres:***@/mlflow") in no_store.stdout, no_store.stdout[-3000:]
    assert "MLflow cannot reach its database" in no_store.stdout and "hunter2" not in no_store.stdout + no_store.stderr
    assert not (mlflow_home / "mlflow" / "mlflow.db").exists()

    wrong = _cli(home, MLOPS_DAGSTER_POSTGRES_URL="mysql://user:secret@db/dagster")
    assert wrong.returncode == 2
    assert "MLOPS_DAGSTER_POSTGRES_URL is mysql://..., not a PostgreSQL URL" in wrong.stderr, wrong.stderr[-2000:]
    assert "secret" not in wrong.stderr + wrong.stdout


def test_two_pipelines_training_at_once_through_one_server_get_distinct_versions_and_one_champion(postgres, tmp_path):
    """Two control machines (two state folders, two Dagster instances) train at the same time
    through one tracking server on PostgreSQL, as a team's laptop and its scheduler would: both
    succeed, each registers its own version (distinct numbers, both READY) and the `champion`
    alias names exactly one of them."""
    from mlflow import MlflowClient

    from .test_mlflow_server import running_server

    store = postgres.create("shared_mlflow")
    with running_server(tmp_path, "--artifacts-destination", str(tmp_path / "server-artifacts"),
                        backend_store_uri=store) as url:
        # Different hyperparameters: two trainings (the same fingerprint would be reused, not trained twice).
        config = tmp_path / "more-trees.yaml"
        config.write_text("ops:\n  candidate_models:\n    config:\n      random_forest:\n        n_estimators: 60\n")
        runs = []
        for name, extra in (("laptop", ()), ("scheduler", ("--config", str(config)))):
            home = tmp_path / name
            environment = {**os.environ, "MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
                           "MLFLOW_TRACKING_URI": url}
            environment.pop("MLOPS_DAGSTER_POSTGRES_URL", None)
            runs.append(subprocess.Popen(
                [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase", *extra], cwd=ROOT,
                env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [run.communicate(timeout=600)[0] for run in runs]
        for run, output in zip(runs, outputs):
            assert run.returncode == 0, output[-3000:]
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        versions = client.search_model_versions("name='mlops-assets-classifier'")
        assert sorted(int(v.version) for v in versions) == [1, 2], [(v.version, v.run_id) for v in versions]
        assert {v.status for v in versions} == {"READY"}
        assert len({v.run_id for v in versions}) == 2, "both versions come from one training run"
        champion = client.get_model_version_by_alias("mlops-assets-classifier", "champion")
        assert champion.version in {v.version for v in versions}
        aliased = [v.version for v in versions if "champion" in (client.get_model_version("mlops-assets-classifier", v.version).aliases)]
        assert aliased == [champion.version]
