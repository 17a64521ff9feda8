"""`python -m mlops_assets.cli run` and `... down`: what `make run` and `make down` call.

`run` materializes what is stale or missing (rebuild.py) in this process against the
persistent Dagster instance in MLOPS_HOME, so `make dev` shows the runs, their logs and their
metadata afterwards. One `run` (or `down`) per MLOPS_HOME at a time (state.RunLock): a second
one waits for the first, naming its PID, then goes on, or gives up after
MLOPS_RUN_LOCK_TIMEOUT seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _prepare_home(settings) -> None:
    from mlops_assets.serving.runtime import private_dir

    # MLOPS_HOME is closed to other users (0700): it holds the registry, secrets and the API's
    # Ray and HAProxy folders (docs/security.md).
    settings.home.parent.mkdir(parents=True, exist_ok=True)
    private_dir(settings.home)
    for path in (settings.dagster_home, settings.mlflow_dir, settings.artifact_root, settings.io_dir):
        path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    if settings.dagster_postgres_url:
        # What dagster.yaml reads, with the driver dagster-postgres needs (settings.py).
        os.environ["MLOPS_DAGSTER_POSTGRES_URL"] = settings.dagster_postgres_url
    write_dagster_yaml(settings, Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml")


DAGSTER_YAML_HEADER = "# Written by mlops_assets/cli.py from MLOPS_DAGSTER_POSTGRES_URL: change that setting, not this file.\n"


def dagster_yaml(settings) -> str:
    """The instance's storage: PostgreSQL when MLOPS_DAGSTER_POSTGRES_URL is set (the file names
    the variable, so no password is written), else Dagster's sqlite files in DAGSTER_HOME."""
    if settings.dagster_postgres_url:
        return DAGSTER_YAML_HEADER + "storage:\n  postgres:\n    postgres_url:\n      env: MLOPS_DAGSTER_POSTGRES_URL\n"
    return DAGSTER_YAML_HEADER + "# unset: Dagster's default sqlite storage in this folder\n"


def write_dagster_yaml(settings, path: Path) -> None:
    """Writes `dagster_yaml` unless the file is someone else's (not empty, not ours): a team's own
    dagster.yaml is left alone, with a warning when the setting asks for something else."""
    current = path.read_text() if path.exists() else ""
    wanted = dagster_yaml(settings)
    if current == wanted:
        return
    if current.strip() and not current.startswith(DAGSTER_YAML_HEADER):
        if settings.dagster_postgres_url:
            print(f"{path} was not written by this project: it is left as it is, and MLOPS_DAGSTER_POSTGRES_URL "
                  "applies only if it names that variable", file=sys.stderr)
        return
    path.write_text(wanted)


def _locked(settings, what: str):
    from mlops_assets.state import RunLock

    return RunLock(settings.home, timeout_s=settings.run_lock_timeout_s, what=what,
                   echo=lambda line: print(line, file=sys.stderr, flush=True))


def run(job_name: str, everything: bool = False, config_path: str | None = None, assets: list[str] | None = None) -> int:
    """Observe the data source (when its bytes changed), then materialize what Dagster finds
    missing or stale, wave by wave until nothing is (rebuild.py); with `everything`, the whole
    job in one run (each asset then returns early when its inputs are unchanged).
    `config_path`: a YAML run config (for example new hyperparameters for candidate_models);
    the assets it configures are materialized.
    `assets`: only these and what is upstream of them (`cli run deployed_api`)."""
    return _locked_work("run", lambda settings: _run(settings, job_name, everything, config_path, assets))


def _locked_work(what: str, work) -> int:
    """`work(settings)` under MLOPS_HOME's run lock: exit code 2 for bad settings or an unsafe
    state folder, 75 (EX_TEMPFAIL: try again later) when another run holds the lock too long."""
    from mlops_assets.serving.runtime import UnsafeFolder
    from mlops_assets.settings import SettingsError, load_settings
    from mlops_assets.state import RunBusy

    try:
        settings = load_settings()
        _prepare_home(settings)
    except (SettingsError, UnsafeFolder) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        with _locked(settings, what):
            return work(settings)
    except RunBusy as exc:
        print(str(exc), file=sys.stderr)
        return 75


def _run(settings, job_name: str, everything: bool, config_path: str | None, assets: list[str] | None = None) -> int:
    import dagster as dg
    import yaml

    from mlops_assets.definitions import build_definitions
    from mlops_assets.rebuild import RunConfigError, UnknownAssetError, rebuild

    run_config = {}
    if config_path:
        try:
            with open(config_path) as handle:
                run_config = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as exc:
            print(f"--config {config_path}: cannot read it as YAML run config: {exc}", file=sys.stderr)
            return 2
        if not isinstance(run_config, dict):
            print(f"--config {config_path}: expected a mapping like `ops: {{candidate_models: {{config: ...}}}}`", file=sys.stderr)
            return 2
    started = time.monotonic()
    defs = build_definitions(settings)
    # Every materialization pushes the pipeline's metrics, from the first wave on: a job that
    # runs `dashboards` (which starts the local Prometheus) starts the local Pushgateway first.
    # Other jobs (`ml_phase`) push to it only if it already runs: they never leave one behind.
    if dg.AssetKey("dashboards") in defs.resolve_job_def(job_name).asset_layer.selected_asset_keys:
        from mlops_assets.targets import resources_for

        resources_for(settings)["monitoring"].ensure_pushgateway(_EchoLog())
    try:
        opened = dg.DagsterInstance.get()
    except Exception as exc:
        if not settings.dagster_postgres_url:
            raise
        from mlops_assets.retries import root_reason

        outer = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = "; ".join(dict.fromkeys((outer, root_reason(exc))))  # Dagster's words, then the driver's
        print(f"MLOPS_DAGSTER_POSTGRES_URL: Dagster cannot open its storage in that PostgreSQL database: {reason}. "
              "Check the server runs, the database exists and the user may connect, or unset the variable "
              "for the embedded sqlite storage", file=sys.stderr)
        return 2
    with opened as instance:
        if not _source_observed(settings, instance):
            observed = defs.resolve_job_def("observe_sources").execute_in_process(instance=instance, raise_on_error=False)
            if not observed.success:
                failure = next(e for e in observed.all_events if e.event_type_value == "STEP_FAILURE")
                print(f"observing the data source failed: {failure.event_specific_data.error.message.strip()}", file=sys.stderr)
                return 1
        try:
            done = rebuild(defs, instance, job_name, everything=everything, run_config=run_config,
                           echo=lambda line: print(line, flush=True), assets=assets)
        except RunConfigError as exc:
            print(f"--config {config_path}: {exc}", file=sys.stderr)
            return 2
        except UnknownAssetError as exc:
            print(f"run {' '.join(assets or [])}: {exc}", file=sys.stderr)
            return 2
    elapsed = time.monotonic() - started
    if done.up_to_date:
        print(f"up to date (nothing changed in their inputs or code): {', '.join(sorted(k.to_user_string() for k in done.up_to_date))}")
    if not done.waves:
        print(f"{job_name}: nothing to do in {elapsed:.1f}s (`--all` re-materializes anyway)")
        return 0
    runs = ", ".join(result.run_id for result in done.results)
    print(f"\n{job_name}: {'succeeded' if done.success else 'FAILED'} in {elapsed:.1f}s "
          f"({len(done.waves)} run{'s' if len(done.waves) > 1 else ''}: {runs})")
    if done.materialized:
        print(f"materialized: {', '.join(sorted(k.to_user_string() for k in done.materialized))}")
    for result in done.results:
        for event in result.all_events:
            if event.event_type_value == "STEP_FAILURE":
                print(f"  failed step {event.step_key}: {event.event_specific_data.error.message.strip()}")
            if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
                data = event.event_specific_data
                print(f"  check {data.asset_key.to_user_string()}:{data.check_name} failed: {data.description}")
    for result in done.results:
        _print_api(result)
        _print_prometheus(result)
        _print_tracking(result)
    return 0 if done.success else 1


def _source_observed(settings, instance) -> bool:
    """True when the instance's latest observation of `dataset_source` already holds the data
    version the source has now: observing it again (a Dagster run, ~0.5 s of a no-change
    `make run`) would record nothing new, and staleness reads only the data version. Any doubt
    (no observation yet, the source unreadable) observes, so errors are reported as before."""
    from mlops_assets.automation import last_observed
    from mlops_assets.targets import resources_for

    try:
        fingerprint = resources_for(settings)["data_source"].fingerprint()
    except Exception:
        return False
    return last_observed(instance) == fingerprint


class _EchoLog:
    """A log with Dagster's method names that prints (for resources called outside a run)."""

    def info(self, message: str) -> None:
        print(message, flush=True)

    def warning(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _materialization(result, key: str):
    """The run's materialization of asset `key`, if it made one."""
    return next(
        (e.event_specific_data.materialization for e in result.all_events
         if e.event_type_value == "ASSET_MATERIALIZATION"
         and e.event_specific_data.materialization.asset_key.to_user_string() == key),
        None,
    )


def _print_api(result) -> None:
    """Where the API answers, after a run that deployed it."""
    api = _materialization(result, "deployed_api")
    if api is None:
        return
    meta = api.metadata
    print(f"\nprediction API (model version {meta['model_version'].value}): {meta['url'].value}")
    print(f"metrics: {meta['metrics'].value}   stop everything: make down")
    print(meta["curl"].value.strip("`\n"))


def _print_prometheus(result) -> None:
    """Where the local Prometheus answers, after a run that provisioned it."""
    monitoring = _materialization(result, "dashboards")
    if monitoring is None or not monitoring.metadata["targets_up"].data:
        return
    meta = monitoring.metadata
    print(f"Prometheus: {meta['prometheus_url'].value} ({meta['rule_count'].value} rules; "
          f"targets up: {', '.join(meta['targets_up'].data)}); dashboards for Grafana: {meta['out_dir'].value}")
    if "alertmanager_url" in meta:
        print(f"Alertmanager: {meta['alertmanager_url'].value} ({meta['alert_delivery'].value})")


def _print_tracking(result) -> None:
    """Where the MLflow tracking server answers, after a run that deployed it (sim, aws)."""
    tracking = _materialization(result, "tracking_server")
    if tracking is None or tracking.metadata["kind"].value != "server" or "user" not in tracking.metadata:
        return
    meta = tracking.metadata
    print(f"MLflow: {meta['store'].value} (user {meta['user'].value}, password: {meta['password'].value}; "
          f"artifacts in {meta['artifact_store'].value})")


def down() -> int:
    """Stop what `make run` started on this machine: the API deployer's processes (the local
    Ray instance) and the monitoring provisioner's (the local Prometheus); for a target whose
    `make down` destroys what it provisioned (the rehearsal), the destroy_infrastructure job
    (recorded in Dagster), then what the target ran beside OpenTofu (hosts, emulator)."""
    from mlops_assets.settings import load_settings
    from mlops_assets.state import RunBusy
    from mlops_assets.targets import resources_for

    from mlops_assets.serving.runtime import UnsafeFolder

    settings = load_settings()
    try:
        _prepare_home(settings)
    except UnsafeFolder as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        with _locked(settings, "down"):
            resources = resources_for(settings)
            if resources["monitoring"].stop():
                print("stopped Prometheus")
            stopped = resources["api_deployer"].stop()
            print(f"stopped the prediction API and its Ray instance ({stopped} processes)" if stopped
                  else "no local API was running")
            infrastructure = resources["infrastructure"]
            return _destroy(settings, infrastructure) if infrastructure.destroyed_by_down else 0
    except RunBusy as exc:
        print(str(exc), file=sys.stderr)
        return 75


def _destroy(settings, infrastructure) -> int:
    """The destroy_infrastructure job (OpenTofu destroy, recorded in Dagster), then the
    target's own teardown. Images stay in the engine, like a registry."""
    import dagster as dg

    from mlops_assets.definitions import build_definitions

    started = time.monotonic()
    target = infrastructure.target
    with dg.DagsterInstance.get() as instance:
        result = build_definitions(settings).resolve_job_def("destroy_infrastructure").execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"ops": {"destroy_hosts": {"config": {"confirm_target": target}}}},
        )
    if result.success:
        print(f"{target}: OpenTofu destroy: {result.output_for_node('destroy_hosts')}")
    else:
        print(f"{target}: OpenTofu destroy FAILED (removing the rest anyway)", file=sys.stderr)
    nothing_left = infrastructure.teardown(print)
    print(f"{target}: down in {time.monotonic() - started:.1f}s")
    return 0 if result.success and nothing_left else 1


def tracking_job(job_name: str, op_name: str, config: dict) -> int:
    """`cli backup` / `cli restore`: the tracking_backup or tracking_restore job, in this
    process, recorded in the Dagster instance `run` uses, under the run lock (a restore never
    runs beside a training)."""
    return _locked_work(job_name, lambda settings: _tracking_job(settings, job_name, op_name, config))


def _tracking_job(settings, job_name: str, op_name: str, config: dict) -> int:
    import dagster as dg

    from mlops_assets.definitions import build_definitions

    with dg.DagsterInstance.get() as instance:
        result = build_definitions(settings).resolve_job_def(job_name).execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": {op_name: {"config": config}}})
    if result.success:
        print(f"{job_name}: {json.dumps(result.output_for_node(op_name))}")
        return 0
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            print(f"{job_name} FAILED: {event.event_specific_data.error.message.strip()}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops-assets")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="materialize what is stale or missing for MLOPS_TARGET (all, or up to ASSET)")
    run_parser.add_argument("assets", nargs="*", metavar="ASSET",
                            help="only these assets and what is upstream of them (e.g. deployed_api); default: the whole job")
    run_parser.add_argument("--job", default="materialize_all")
    run_parser.add_argument("--all", action="store_true", help="materialize every asset of the job, stale or not")
    run_parser.add_argument("--config", metavar="RUN_CONFIG.yaml",
                            help="Dagster run config (ops: {ASSET: {config: ...}}); the assets it configures are materialized")
    sub.add_parser("down", help="stop the prediction API and the local Ray instance that `run` started")
    sub.add_parser("dev", help="`dagster dev ARGS...` on the instance `run` uses (what `make dev` calls)")
    backup_parser = sub.add_parser("backup", help="sim/aws: dump the tracking server's databases into the bucket")
    backup_parser.add_argument("--keep", type=int, default=7, help="how many backups to keep (the newest)")
    restore_parser = sub.add_parser("restore", help="sim/aws: bring the tracking server's databases back from a backup")
    restore_parser.add_argument("--key", default="", help="the backup's key (as `backup` prints it); default: the newest")
    restore_parser.add_argument("--confirm", required=True, metavar="TARGET",
                                help="the target's name: runs and models logged since the backup are lost")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dev"]:  # everything after it is dagster's (-h included)
        return dev(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.job, args.all, args.config, args.assets)
    if args.command == "down":
        return down()
    if args.command == "backup":
        return tracking_job("tracking_backup", "back_up_tracking_store", {"keep": args.keep})
    if args.command == "restore":
        return tracking_job("tracking_restore", "restore_tracking_store",
                            {"backup_key": args.key, "confirm_target": args.confirm})
    return 2


def dev(dagster_args: list[str]) -> int:
    """`dagster dev` with the environment `run` gives Dagster: the same DAGSTER_HOME and
    dagster.yaml, and MLOPS_DAGSTER_POSTGRES_URL with the driver dagster-postgres needs."""
    from mlops_assets.settings import SettingsError, load_settings

    from mlops_assets.serving.runtime import UnsafeFolder

    try:
        _prepare_home(load_settings())
    except (SettingsError, UnsafeFolder) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    dagster = Path(sys.executable).with_name("dagster")
    os.execv(str(dagster), [str(dagster), "dev", *dagster_args])


if __name__ == "__main__":
    sys.exit(main())
