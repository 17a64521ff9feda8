"""`python -m mlops_assets.cli run`: what `make run` calls.

Runs the `materialize_all` job in this process against the persistent Dagster instance in
MLOPS_HOME, so `make dev` shows the run, its logs and its metadata afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _prepare_home() -> None:
    from mlops_assets.settings import load_settings

    settings = load_settings()
    for path in (settings.home, settings.dagster_home, settings.mlflow_dir, settings.artifact_root, settings.io_dir):
        path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))


def run(job_name: str) -> int:
    _prepare_home()
    import dagster as dg

    from mlops_assets.definitions import defs

    started = time.monotonic()
    job = defs.resolve_job_def(job_name)
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    elapsed = time.monotonic() - started
    print(f"\n{job_name}: {'succeeded' if result.success else 'FAILED'} in {elapsed:.1f}s (run {result.run_id})")
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            print(f"  failed step {event.step_key}: {event.event_specific_data.error.message.strip()}")
        if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
            data = event.event_specific_data
            print(f"  check {data.asset_key.to_user_string()}:{data.check_name} failed: {data.description}")
    return 0 if result.success else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops-assets")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="materialize the whole asset graph for MLOPS_TARGET")
    run_parser.add_argument("--job", default="materialize_all")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.job)
    return 2


if __name__ == "__main__":
    sys.exit(main())
