"""`make run`'s entry point: materializes what is missing or stale, and nothing when
nothing changed; a new data file brings the ML phase back."""

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

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
    assert "materializing: candidate_models, dataset, selected_model" in cold
    assert "ml_phase: succeeded" in cold

    again = _run(home)
    assert "nothing to do" in again
    assert "up to date (nothing changed in their inputs or code): candidate_models, dataset, selected_model" in again

    # A new file behind MLOPS_DATASET makes the chain stale again.
    from mlops_assets.ml.data import _read_palmerpenguins

    _read_palmerpenguins().head(300).write_csv(tmp_path / "fewer.csv")
    changed = _run(home, MLOPS_DATASET=str(tmp_path / "fewer.csv"))
    assert "materializing: candidate_models, dataset, selected_model" in changed

    forced = _run(home, "--all", MLOPS_DATASET=str(tmp_path / "fewer.csv"))
    assert "materializing: candidate_models, dataset, selected_model" in forced
    assert "reusing its 3 candidates" in forced


def test_run_reports_a_missing_data_file(tmp_path):
    environment = {**os.environ, "MLOPS_HOME": str(tmp_path), "MLOPS_DATASET": str(tmp_path / "absent.csv")}
    done = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "MLOPS_DATASET" in done.stderr
