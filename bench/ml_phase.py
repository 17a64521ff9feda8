"""Benchmark of the ML phase: a cold materialization against a no-change re-run.

Each run is the real command `make run` calls (`python -m mlops_assets.cli run --job
ml_phase`) in a fresh process, against a fresh state folder, so the figures include Python
start-up, imports, MLflow's sqlite migrations and Dagster's bookkeeping.

    .venv/bin/python bench/ml_phase.py [--repeat 3] [--store sqlite,postgres,server]

`--store postgres` (as root) runs the same measurements with Dagster's instance and the MLflow
store in a throwaway local PostgreSQL cluster (mlops_assets_tests/postgres_cluster.py: Unix
socket, fsync off), fresh databases for each repeat. `--store server` (as root, a container
engine) trains through the rehearsal's tracking server: a throwaway `sim` state folder whose
`tracking_server` asset deploys `mlflow server` on PostgreSQL on the monitoring test host, its
artifacts in the emulator's S3, basic auth; the tracking database is emptied before each
repeat (the sqlite mode's fresh file), and the rehearsal is torn down at the end. Several
stores in one `--store` print side by side, from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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


@contextlib.contextmanager
def rehearsal_tracking_server():
    """The tracking server on the rehearsal's monitoring host (what `sim` trains through),
    deployed by `cli run tracking_server` in a throwaway sim state folder; `make down`'s code
    path removes it all afterwards. Yields (url, basic-auth password, a function that empties
    the tracking database and waits until the server answers again)."""
    from mlops_assets.rehearsal.hosts import TestHosts

    with tempfile.TemporaryDirectory(prefix="mlops-bench-sim-") as tmp:
        env = {**os.environ, "MLOPS_HOME": tmp, "MLOPS_TARGET": "sim", "DAGSTER_HOME": f"{tmp}/dagster"}
        env.pop("MLFLOW_TRACKING_URI", None)
        try:
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "mlops_assets.cli", "run", "tracking_server"],
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"the rehearsal's tracking server was not deployed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            record = json.loads((Path(tmp) / "ansible" / "sim" / "tracking-server.json").read_text())
            password = Path(record["password_file"]).read_text().strip()
            print(f"[server] {record['url']} deployed on the rehearsal's monitoring host in "
                  f"{time.perf_counter() - started:.0f}s (not measured)", flush=True)
            hosts = TestHosts.attach(Path(tmp) / "rehearsal" / "hosts.json")
            monitoring = next(name for name in hosts.hosts if name.endswith("monitoring"))

            def reset() -> None:
                import requests

                hosts.exec(monitoring, "docker stop mlflow-tracking >/dev/null && "
                                       "docker exec mlflow-postgres dropdb -U mlflow mlflow && "
                                       "docker exec mlflow-postgres createdb -U mlflow mlflow && "
                                       "docker start mlflow-tracking >/dev/null")
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    with contextlib.suppress(requests.RequestException):
                        if requests.get(f"{record['url']}/api/2.0/mlflow/experiments/search?max_results=1",
                                        auth=("admin", password), timeout=5).ok:
                            return
                    time.sleep(1)
                sys.exit("the tracking server did not answer within 120 s after its database was emptied")

            yield record["url"], password, reset
        finally:
            subprocess.run([sys.executable, "-m", "mlops_assets.cli", "down"], cwd=ROOT, env=env, capture_output=True)


def measure(store: str, repeat: int, cluster=None, server=None) -> tuple[float, float, float]:
    colds, warms, forced_runs = [], [], []
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix="mlops-bench-") as tmp:
            home = Path(tmp)
            if server is not None:
                tracking_uri, password, reset = server
                reset()
                store_env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_TRACKING_USERNAME": "admin",
                             "MLFLOW_TRACKING_PASSWORD": password}
                os.environ.update({k: v for k, v in store_env.items() if k != "MLFLOW_TRACKING_URI"})  # mlflow_counts
            elif cluster is None:
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
    parser.add_argument("--store", default="sqlite", help="sqlite, postgres, server, or several: sqlite,postgres,server")
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
    if "server" in stores:
        sys.path.insert(0, str(ROOT))
        with rehearsal_tracking_server() as server:
            figures["server"] = measure("server", args.repeat, server=server)
    places = {"sqlite": "sqlite files in the state folder",
              "postgres": "Dagster and MLflow in a local PostgreSQL, Unix socket",
              "server": "MLflow through the rehearsal's tracking server (PostgreSQL, S3 stand-in, basic auth)"}
    for store, (cold, warm, forced) in figures.items():
        where = places[store]
        print(f"\n| ML phase, {where}, fresh process each (median of {args.repeat}) | seconds | / cold | target |")
        print("| --- | --- | --- | --- |")
        print(f"| cold (fresh state folder) | {cold:.1f} | 100% | <= 60 s |")
        print(f"| no-change re-run (`make run`: stale assets only) | {warm:.1f} | {warm / cold:.0%} | <= 20% |")
        print(f"| no-change re-materialization of every asset (`--all`) | {forced:.1f} | {forced / cold:.0%} | |")


if __name__ == "__main__":
    main()
