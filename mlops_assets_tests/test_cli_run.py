"""`make run`'s entry point: materializes what is missing or stale, and nothing when
nothing changed; a new data file brings the ML phase back."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.service


ROOT = Path(__file__).resolve().parent.parent


def _run(home: Path, *args: str, **env: str) -> str:
    environment = {**os.environ, "MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), **env}
    done = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase", *args],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr  # Dagster's logs go to stderr


def _mlflow_runs(home: Path) -> list:
    from mlops_assets.resources.mlflow_registry import MlflowRegistry

    registry = MlflowRegistry(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    return registry.client().search_runs([registry.experiment_id()], max_results=1000)


def test_run_materializes_only_what_changed(tmp_path):
    from mlops_assets.resources.mlflow_registry import REUSED_TAG

    home = tmp_path / "home"
    cold = _run(home)
    # The ML phase with the store it needs (tracking_server, and tofu_state under it).
    assert "[1] materializing: candidate_models, dataset, selected_model, tofu_state, tracking_server (missing" in cold
    assert "ml_phase: succeeded" in cold and "(1 run:" in cold
    # A job without `dashboards` starts no Pushgateway (none is left behind): each asset's
    # push says so in a warning, and the run still succeeds.
    assert not (home / "prometheus" / "pushgateway.pid").exists()
    assert cold.count("pipeline metrics not pushed: the Pushgateway of") == 5, cold[-3000:]

    runs = len(_mlflow_runs(home))
    again = _run(home)
    assert "nothing to do" in again
    assert len(_mlflow_runs(home)) == runs  # the waves did not run candidate_models: no MLflow run
    assert ("up to date (nothing changed in their inputs or code): candidate_models, dataset, selected_model, "
            "tofu_state, tracking_server") in again

    # A new file behind MLOPS_DATASET: the dataset first, then each asset whose input got a
    # new data version, one wave at a time.
    from mlops_assets.ml.data import _read_palmerpenguins

    _read_palmerpenguins().head(300).write_csv(tmp_path / "fewer.csv")
    changed = _run(home, MLOPS_DATASET=str(tmp_path / "fewer.csv"))
    assert "[1] materializing: dataset (missing, stale or configured)" in changed
    # selected_model reads the dataset too (it scores on the test split).
    assert "[2] materializing: candidate_models, selected_model (their inputs have new data versions)" in changed
    assert "materialized: candidate_models, dataset, selected_model" in changed

    runs = _mlflow_runs(home)
    forced = _run(home, "--all", MLOPS_DATASET=str(tmp_path / "fewer.csv"))
    assert "[1] materializing: candidate_models, dataset, selected_model, tofu_state, tracking_server" in forced
    assert "reusing its 3 candidates" in forced
    # One MLflow run, the forced Dagster run's, naming the training it reused; nothing trained.
    [record] = [run for run in _mlflow_runs(home) if run.info.run_id not in {r.info.run_id for r in runs}]
    newest_training = max((r for r in runs if r.data.tags.get("mlops.role") == "candidate_set"), key=lambda r: r.info.start_time)
    assert record.data.tags[REUSED_TAG] == newest_training.info.run_id and record.info.status == "FINISHED"


def test_new_hyperparameters_retrain_and_stop_where_the_champion_stays(tmp_path):
    home = tmp_path / "home"
    _run(home)
    config = tmp_path / "run_config.yaml"
    config.write_text("ops:\n  candidate_models:\n    config:\n      random_forest:\n        n_estimators: 50\n")
    retrained = _run(home, "--config", str(config))
    assert "[1] materializing: candidate_models (missing, stale or configured)" in retrained
    assert "training random_forest with {'n_estimators': 50" in retrained
    # New candidates (a new MLflow parent run): selected_model is compared again ...
    assert "[2] materializing: selected_model" in retrained
    # ... and keeps the champion (same test data, not strictly better): nothing else runs.
    assert "[3]" not in retrained
    assert "up to date (nothing changed in their inputs or code): dataset" in retrained


def test_run_config_naming_an_unknown_asset_is_refused(tmp_path):
    config = tmp_path / "run_config.yaml"
    config.write_text("ops:\n  candidate_model:\n    config: {}\n")
    environment = {**os.environ, "MLOPS_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase", "--config", str(config)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    assert "configures candidate_model, which the job does not have" in done.stderr
    assert "candidate_models" in done.stderr
    # The same for `run ASSET` naming an asset the job does not have.
    named = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase", "deployed_api"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert named.returncode == 2
    assert "deployed_api is not an asset of this job; its assets are candidate_models, dataset, selected_model, tofu_state, tracking_server" in named.stderr


def test_run_reports_a_missing_data_file(tmp_path):
    environment = {**os.environ, "MLOPS_HOME": str(tmp_path), "MLOPS_DATASET": str(tmp_path / "absent.csv")}
    done = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "MLOPS_DATASET" in done.stderr


def test_two_runs_started_together_on_one_home_do_not_interleave(tmp_path):
    """The second `cli run` waits for the first (naming its PID), then finds nothing to do.

    The first run is paused (SIGSTOP) while it holds the lock until the second says it waits:
    on a loaded machine the second could otherwise start only after the first had finished."""
    home = tmp_path / "home"
    environment = {**os.environ, "MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    command = [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]

    def start(log: Path) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT, text=True)

    def wait_for(what: str, found, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + 300
        while not found():
            assert process.poll() is None, f"exited {process.returncode} before {what}: {process.args}"
            assert time.monotonic() < deadline, f"no {what} within 300 s"
            time.sleep(0.2)

    lock = home / ".run.lock"
    first = start(logs[0])
    try:
        wait_for("lock held by the first run", lambda: lock.exists() and f"pid {first.pid}:" in lock.read_text(), first)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = start(logs[1])
            wait_for("wait announced by the second run", lambda: "another mlops-assets run holds" in logs[1].read_text(),
                     second)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        runs = [first, second]
        for run in runs:
            run.wait(timeout=600)
    finally:
        for run in (first, locals().get("second")):
            if run is not None and run.poll() is None:
                run.kill()
    outputs = [log.read_text() for log in logs]
    assert [run.returncode for run in runs] == [0, 0], [o[-2000:] for o in outputs]
    first_out, waited = outputs
    assert f"pid {first.pid}:" in waited
    assert "another mlops-assets run holds" not in first_out
    assert "materialized: candidate_models, dataset, selected_model" in first_out
    # It started only after the first had finished: everything was already up to date.
    assert "the other run has finished" in waited and "nothing to do" in waited
    assert "[1] materializing" not in waited
