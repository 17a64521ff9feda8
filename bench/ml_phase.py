"""Benchmark of the ML phase: a cold materialization against a no-change re-run.

Each run is the real command `make run` calls (`python -m mlops_assets.cli run --job
ml_phase`) in a fresh process, against a fresh state folder, so the figures include Python
start-up, imports, MLflow's sqlite migrations and Dagster's bookkeeping.

    .venv/bin/python bench/ml_phase.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_run(home: Path, *extra: str) -> float:
    env = {**os.environ, "MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def mlflow_counts(home: Path) -> tuple[int, int]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    runs = sum(len(client.search_runs([e.experiment_id], max_results=10_000)) for e in client.search_experiments())
    return runs, len(client.search_model_versions())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    colds, warms, forced_runs = [], [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="mlops-bench-") as tmp:
            home = Path(tmp)
            cold = timed_run(home)
            before = mlflow_counts(home)
            warm = timed_run(home)  # what `make run` does again: only stale assets
            if mlflow_counts(home) != before:
                sys.exit(f"a no-change re-run opened an MLflow run or registered: runs/versions {before} -> {mlflow_counts(home)}")
            forced = timed_run(home, "--all")  # every asset re-materialized, each returning early
            after = mlflow_counts(home)
            # The forced run's own MLflow run, which names the training it reused; no candidate, no version.
            if after != (before[0] + 1, before[1]):
                sys.exit(f"a no-change --all re-run trained or registered: runs/versions {before} -> {after}")
            colds.append(cold)
            warms.append(warm)
            forced_runs.append(forced)
            print(
                f"[{i + 1}/{args.repeat}] cold {cold:.1f}s  no-change {warm:.1f}s  no-change --all {forced:.1f}s"
                f"  (MLflow runs/versions {before} -> {after}: the --all run's own run, naming the reused training)",
                flush=True,
            )
    cold, warm, forced = (statistics.median(x) for x in (colds, warms, forced_runs))
    print("\n| ML phase, fresh process each (median of %d) | seconds | / cold | target |" % args.repeat)
    print("| --- | --- | --- | --- |")
    print(f"| cold (fresh state folder) | {cold:.1f} | 100% | <= 60 s |")
    print(f"| no-change re-run (`make run`: stale assets only) | {warm:.1f} | {warm / cold:.0%} | <= 20% |")
    print(f"| no-change re-materialization of every asset (`--all`) | {forced:.1f} | {forced / cold:.0%} | |")


if __name__ == "__main__":
    main()
