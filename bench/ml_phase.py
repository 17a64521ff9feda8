"""Benchmark of the ML phase: a cold materialization against a no-change re-run.

Each run is the real command `make run` calls (`python -m mlops_assets.cli run --job
ml_phase`) in a fresh process, against a fresh state folder, so the figures include Python
start-up, imports, MLflow's sqlite migrations and Dagster's bookkeeping.

    .venv/bin/python bench/ml_phase.py [--repeat 3] [--store sqlite,postgres]

`--store postgres` (as root) runs the same measurements with Dagster's instance and the MLflow
store in a throwaway local PostgreSQL cluster (mlops_assets_tests/postgres_cluster.py: Unix
socket, fsync off), fresh databases for each repeat; `sqlite,postgres` prints both, side by
side, from one run.
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


def timed_run(home: Path, *extra: str, store_env: dict[str, str]) -> float:
    env = {**os.environ, "MLOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLOPS_DAGSTER_POSTGRES_URL", None)
    env.update(store_env)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mlops_assets.cli", "run", "--job", "ml_phase", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def mlflow_counts(tracking_uri: str) -> tuple[int, int]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = sum(len(client.search_runs([e.experiment_id], max_results=10_000)) for e in client.search_experiments())
    return runs, len(client.search_model_versions())


def measure(store: str, repeat: int, cluster=None) -> tuple[float, float, float]:
    colds, warms, forced_runs = [], [], []
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix="mlops-bench-") as tmp:
            home = Path(tmp)
            if cluster is None:
                store_env, tracking_uri = {}, f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
            else:
                tracking_uri = cluster.create("bench_mlflow")
                store_env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLOPS_DAGSTER_POSTGRES_URL": cluster.create("bench_dagster")}
            cold = timed_run(home, store_env=store_env)
            before = mlflow_counts(tracking_uri)
            warm = timed_run(home, store_env=store_env)  # what `make run` does again: only stale assets
            if mlflow_counts(tracking_uri) != before:
                sys.exit(f"a no-change re-run opened an MLflow run or registered: runs/versions {before} -> {mlflow_counts(tracking_uri)}")
            forced = timed_run(home, "--all", store_env=store_env)  # every asset re-materialized, each returning early
            after = mlflow_counts(tracking_uri)
            # The forced run's own MLflow run, which names the training it reused; no candidate, no version.
            if after != (before[0] + 1, before[1]):
                sys.exit(f"a no-change --all re-run trained or registered: runs/versions {before} -> {after}")
            colds.append(cold)
            warms.append(warm)
            forced_runs.append(forced)
            print(
                f"[{store} {i + 1}/{repeat}] cold {cold:.1f}s  no-change {warm:.1f}s  no-change --all {forced:.1f}s"
                f"  (MLflow runs/versions {before} -> {after}: the --all run's own run, naming the reused training)",
                flush=True,
            )
    return tuple(statistics.median(x) for x in (colds, warms, forced_runs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", default="sqlite", help="sqlite, postgres, or both: sqlite,postgres")
    args = parser.parse_args()
    stores = args.store.split(",")
    figures = {}
    if "sqlite" in stores:
        figures["sqlite"] = measure("sqlite", args.repeat)
    if "postgres" in stores:
        sys.path.insert(0, str(ROOT))
        from mlops_assets_tests.postgres_cluster import throwaway_cluster

        with throwaway_cluster() as cluster:
            figures["postgres"] = measure("postgres", args.repeat, cluster)
    for store, (cold, warm, forced) in figures.items():
        where = ("sqlite files in the state folder" if store == "sqlite"
                 else "Dagster and MLflow in a local PostgreSQL, Unix socket")
        print(f"\n| ML phase, {where}, fresh process each (median of {args.repeat}) | seconds | / cold | target |")
        print("| --- | --- | --- | --- |")
        print(f"| cold (fresh state folder) | {cold:.1f} | 100% | <= 60 s |")
        print(f"| no-change re-run (`make run`: stale assets only) | {warm:.1f} | {warm / cold:.0%} | <= 20% |")
        print(f"| no-change re-materialization of every asset (`--all`) | {forced:.1f} | {forced / cold:.0%} | |")


if __name__ == "__main__":
    main()
