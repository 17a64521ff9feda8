"""`make run`'s entry point: materializes what is missing or stale, and nothing when
nothing changed; a new data file brings the ML phase back."""

import os
import subprocess
import sys
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


def test_run_materializes_only_what_changed(tmp_path):
    home = tmp_path / "home"
    cold = _run(home)
    assert "[1] materializing: candidate_models, dataset, selected_model (missing" in cold
    assert "ml_phase: succeeded" in cold and "(1 run:" in cold
    # A job without `dashboards` starts no Pushgateway (none is left behind): each asset's
    # push says so in a warning, and the run still succeeds.
    assert not (home / "prometheus" / "pushgateway.pid").exists()
    assert cold.count("pipeline metrics not pushed: the Pushgateway of") == 3, cold[-3000:]

    again = _run(home)
    assert "nothing to do" in again
    assert "up to date (nothing changed in their inputs or code): candidate_models, dataset, selected_model" in again

    # A new file behind MLOPS_DATASET: the dataset first, then each asset whose input got a
    # new data version, one wave at a time.
    from mlops_assets.ml.data import _read_palmerpenguins

    _read_palmerpenguins().head(300).write_csv(tmp_path / "fewer.csv")
    changed = _run(home, MLOPS_DATASET=str(tmp_path / "fewer.csv"))
    assert "[1] materializing: dataset (missing, stale or configured)" in changed
    # selected_model reads the dataset too (it scores on the test split).
    assert "[2] materializing: candidate_models, selected_model (their inputs have new data versions)" in changed
    assert "materialized: candidate_models, dataset, selected_model" in changed

    forced = _run(home, "--all", MLOPS_DATASET=str(tmp_path / "fewer.csv"))
    assert "[1] materializing: candidate_models, dataset, selected_model" in forced
    assert "reusing its 3 candidates" in forced


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
    assert "deployed_api is not an asset of this job; its assets are candidate_models, dataset, selected_model" in named.stderr


def test_run_reports_a_missing_data_file(tmp_path):
    environment = {**os.environ, "MLOPS_HOME": str(tmp_path), "MLOPS_DATASET": str(tmp_path / "absent.csv")}
    done = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "MLOPS_DATASET" in done.stderr


def test_two_runs_started_together_on_one_home_do_not_interleave(tmp_path):
    """The second `cli run` waits for the first (naming its PID), then finds nothing to do."""
    home = tmp_path / "home"
    environment = {**os.environ, "MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    command = [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase"]
    runs = [subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [o[-2000:] for o in outputs]
    waited = [o for o in outputs if "another mlops-assets run holds" in o]
    assert len(waited) == 1, "exactly one run must have waited for the other"
    first = next(o for o in outputs if o is not waited[0])
    holder = next(run.pid for run, o in zip(runs, outputs) if o is first)
    assert f"pid {holder}:" in waited[0]
    assert "materialized: candidate_models, dataset, selected_model" in first
    # It started only after the first had finished: everything was already up to date.
    assert "the other run has finished" in waited[0] and "nothing to do" in waited[0]
    assert "[1] materializing" not in waited[0]
