"""The local Ray instance and the Serve application on it, wrapped once.

Three parts, each small:
- the process lifecycle: start (or reuse) a single-node Ray instance whose every listener is
  on loopback, with its state under MLOPS_HOME and no dashboard; stop everything it started
  (`make down`); the commands and environment are in serving/runtime.py;
- the backend a rollout needs (rollout.py's `RolloutBackend`): apply a Serve config, remove
  the application, ask Serve whether it gave up, read /readyz;
- `deploy()`: the Serve config of a model version, handed to the rollout policy of rollout.py
  (health check, rollback, the `deployed` record).

The Ray instance outlives the Dagster run on purpose: `make run` ends with the API serving.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from mlops_assets import serving
from mlops_assets.rollout import DeployFailed, Deployment, Rollout, RolloutError
from mlops_assets.serving import deploy as serve_deploy
from mlops_assets.serving.client import ApiClient
from mlops_assets.serving.runtime import (
    RayServeRuntime,
    _processes,
    instance_processes,
    private_dir,
    stop_instance,
    write_private_file,
)
from mlops_assets.state import RECORDS
from mlops_assets.versioning import code_version_of

__all__ = ["RayServe", "RayServeError", "DeployFailed", "Deployment"]

# The code the replicas run: a change replaces them (serve_config's runtime_env), so a
# developer's edit to mlops_assets/serving reaches the running API on the next deploy.
SERVING_CODE_VERSION = code_version_of(Path(serving.__file__).parent)

# While waiting for a version, how often Serve is asked whether it gave up (a short-lived
# driver process: ~2 s of CPU each time).
STATUS_EVERY_S = 10.0


# What the running instance was started with (a hash of its command and environment): Ray's
# processes read their settings (HAProxy's timeouts, ports...) only at start.
START_RECORD = "ray-started"


def _start_fingerprint(runtime: RayServeRuntime) -> str:
    import dataclasses
    import hashlib

    # The runtime's fields too: the shim's http-request timeout and Serve's http_options are
    # fixed when the instance starts as well.
    fields = {f.name: str(getattr(runtime, f.name)) for f in dataclasses.fields(runtime)}
    started_with = [runtime.start_command(), sorted(runtime.environment().items()), sorted(fields.items())]
    return hashlib.sha256(json.dumps(started_with).encode()).hexdigest()[:16]


class RayServeError(RolloutError):
    """The Ray instance or the API did not come up as asked."""


class RayServe(dg.ConfigurableResource):
    """A local Ray instance serving the prediction API on `host:api_port`."""

    state_dir: str
    host: str = "127.0.0.1"
    api_port: int = 8000
    metrics_port: int = 8080
    gcs_port: int = 6379
    client_port: int = 10001
    haproxy_metrics_port: int = 9101
    haproxy_stats_port: int = 8404
    fallback_proxy_port: int = 8500
    replica_port_min: int = 30000
    replica_port_max: int = 31000
    num_cpus: int = 2
    # One replica on a 2-core machine: the serving stack stays under 1 GiB PSS (2 replicas:
    # ~1.14 GiB) at equal single-row throughput; Serve restarts a dead replica (~20 s). Set
    # 2 for overlap during a replica restart (the resilience test runs 2).
    num_replicas: int = 1
    throughput_optimized: bool = True
    haproxy: bool = True
    batch_max_size: int = 16
    batch_wait_s: float = 0.002
    # Serve's per-request access log (settings.api_access_log, MLOPS_API_ACCESS_LOG): off by default.
    access_log: bool = False
    max_rows: int = 1000
    max_body_bytes: int = 1024 * 1024
    ready_timeout_s: float = 240.0
    # How long a rollback may take to report the previous version again (None: ready_timeout_s).
    rollback_timeout_s: float | None = None
    # Failed replica starts before Serve gives up on a new version (Serve's
    # max_constructor_retry_count; None: Serve's default, 3 per replica). Each failed start
    # costs a worker process (~10-15 s on 2 cores), so fewer detects a broken version sooner.
    replica_start_attempts: int | None = None
    # How replicas get a registry model: "folder" = this resource downloads the version into
    # state_dir/models and replicas load the folder (no MLflow in the replicas: ~100 MiB less
    # each); "registry" = replicas resolve the `models:/` URI with MLflow themselves.
    model_transport: str = "folder"
    metrics_report_interval_ms: int = 10000
    # The public API's timeouts, seconds (settings.API_TIMEOUTS, MLOPS_API_TIMEOUTS).
    timeout_client_s: int = 30
    timeout_server_s: int = 60
    timeout_connect_s: int = 5
    timeout_http_request_s: int = 10
    request_timeout_s: float = 30.0
    # API keys for POST /predict (docs/security.md): a file of keys, one a line, that the
    # replicas read (and re-read when it changes); or the keys, comma-separated (wire it as
    # dg.EnvVar("MLOPS_API_KEYS") so that Dagster never shows it), written to a 0600 file in
    # state_dir. Neither: no key needed.
    api_key_file: str | None = None
    api_keys: str | None = None

    # -- the Ray instance --------------------------------------------------------------------
    def runtime(self) -> RayServeRuntime:
        return RayServeRuntime(
            state_dir=Path(self.state_dir), host=self.host, api_port=self.api_port, metrics_port=self.metrics_port,
            gcs_port=self.gcs_port, client_port=self.client_port, haproxy_metrics_port=self.haproxy_metrics_port,
            haproxy_stats_port=self.haproxy_stats_port, fallback_proxy_port=self.fallback_proxy_port,
            num_cpus=self.num_cpus, throughput_optimized=self.throughput_optimized, haproxy=self.haproxy,
            replica_port_min=self.replica_port_min, replica_port_max=self.replica_port_max,
            metrics_report_interval_ms=self.metrics_report_interval_ms,
            timeout_client_s=self.timeout_client_s, timeout_server_s=self.timeout_server_s,
            timeout_connect_s=self.timeout_connect_s, timeout_http_request_s=self.timeout_http_request_s,
            request_timeout_s=self.request_timeout_s,
        )

    @property
    def api_url(self) -> str:
        return self.runtime().api_url

    @property
    def metrics_url(self) -> str:
        return self.runtime().metrics_url

    def is_running(self) -> bool:
        return bool(instance_processes(self.runtime())) and not self.missing_parts()

    def missing_parts(self) -> list[str]:
        """What a whole instance of ours has and this one lacks: its GCS, its raylet (a raylet
        that crashed leaves a GCS that answers but cannot serve: "Failed to get node info"),
        GCS's port. Empty when whole, or when nothing of it runs."""
        table = _processes()
        pids = [p for p in instance_processes(self.runtime()) if p in table]
        if not pids:
            return []
        names = {Path(table[p][1].split(" ", 1)[0]).name for p in pids}
        missing = [part for part in ("gcs_server", "raylet") if part not in names]
        if not _port_open(self.host, self.gcs_port):
            missing.append(f"GCS port {self.gcs_port}")
        return missing

    def ensure_started(self, log: Callable[[str], None] | None = None) -> bool:
        """Start the Ray instance unless it runs already, whole. An instance of ours that is
        not whole (a process crashed) is stopped and started afresh. Returns True if started."""
        runtime = self.runtime()
        missing = self.missing_parts()
        running = bool(instance_processes(runtime))
        fingerprint = _start_fingerprint(runtime)
        record = Path(self.state_dir) / START_RECORD
        whole = running and not missing
        stale = whole and (not record.is_file() or record.read_text() != fingerprint)
        if whole and not stale:
            return False
        if missing or stale:
            if log:
                why = (f"is not whole ({', '.join(missing)} gone)" if missing else
                       "was started with other settings (timeouts, ports or the environment Ray reads at start)")
                log(f"the Ray instance on {runtime.address} {why}: stopping it and starting it again")
            stop_instance(runtime)
            deadline = time.monotonic() + 15
            while _port_open(self.host, self.gcs_port) and time.monotonic() < deadline:
                time.sleep(0.2)
        if _port_open(self.host, self.gcs_port):
            raise RayServeError(
                f"port {self.gcs_port} on {self.host} is taken by another program (another Ray?); "
                "stop it or set the ray_serve resource's gcs_port"
            )
        stop_instance(runtime)  # leftovers of a crashed instance of ours
        env = {**_environ(), **runtime.environment()}  # creates the private folders
        started = time.monotonic()
        result = subprocess.run(runtime.start_command(), env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RayServeError(
                f"`ray start` failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n"
                f"Ray's logs are in {runtime.ray_dir}; a port may be taken (gcs {self.gcs_port}, "
                f"metrics {self.metrics_port}, client {self.client_port})"
            )
        write_private_file(runtime.state_dir, START_RECORD, fingerprint)
        if log:
            log(f"started Ray on {runtime.address} in {time.monotonic() - started:.1f}s (state {runtime.ray_dir})")
        return True

    def shutdown(self) -> int:
        """Stop the Ray instance, the API and its haproxy. Returns how many processes ended."""
        stopped = stop_instance(self.runtime())
        self.runtime().remove_short_dirs()  # Ray's folder in /tmp, if the state folder was too deep
        RECORDS["deployed"].in_folder(self.state_dir).remove()
        return stopped

    # -- API keys --------------------------------------------------------------------------
    def _keys(self) -> list[str]:
        return [k.strip() for k in (self.api_keys or "").split(",") if k.strip()]

    def key_file(self) -> str | None:
        """The file of keys the replicas read: api_key_file, or state_dir/api-keys for api_keys."""
        if self._keys():
            return str(Path(self.state_dir) / "api-keys")
        return self.api_key_file

    def write_key_file(self) -> None:
        """api_keys into state_dir/api-keys (0600, no-follow), where the replicas read them."""
        keys = self._keys()
        if keys:
            state = Path(self.state_dir)
            state.parent.mkdir(parents=True, exist_ok=True)
            write_private_file(private_dir(state), "api-keys", "\n".join(keys) + "\n")

    def client_key(self) -> str | None:
        """A key for this project's own requests (smoke checks): the first one."""
        keys = self._keys()
        if keys:
            return keys[0]
        if self.api_key_file:
            from mlops_assets.serving.auth import read_keys

            return next(iter(read_keys(self.api_key_file)), None)
        return None

    def client(self) -> ApiClient:
        return ApiClient(self.api_url, api_key=self.client_key())

    # -- the application ---------------------------------------------------------------------
    def app_args(self, features: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "features": features, "max_rows": self.max_rows, "max_body_bytes": self.max_body_bytes,
            "batch_max_size": self.batch_max_size, "batch_wait_s": self.batch_wait_s, "bind_host": self.host,
            **({"api_key_file": self.key_file()} if self.key_file() else {}),
            **({"replica_start_attempts": self.replica_start_attempts} if self.replica_start_attempts else {}),
        }

    def rollout(self) -> Rollout:
        return Rollout(self, RECORDS["deployed"].in_folder(self.state_dir), ready_timeout_s=self.ready_timeout_s,
                       rollback_timeout_s=self.rollback_timeout_s, status_every_s=STATUS_EVERY_S)

    def deploy(self, model_uri: str, expected_version: str, tracking_uri: str | None = None,
               features: list[dict[str, str]] | None = None, log: Callable[[str], None] | None = None,
               transport: str | None = None, check: Callable[[], Any] | None = None, engine: str | None = None) -> Deployment:
        """Serve `model_uri` (an MLflow URI pinned to a version, or a model folder) and wait
        until the API reports `expected_version` (rollout.py: unchanged, reconfigured in place
        or deployed; `check()` then runs, and a failure rolls back). `engine` (onnx or sklearn)
        overrides the engine selected_model recorded for the version."""
        self.write_key_file()
        # What was asked, before any registry lookup: the same request as the last healthy
        # deployment, with the API serving that version, needs nothing (not even MLflow).
        request = {
            "model_uri": model_uri, "tracking_uri": tracking_uri, "version": expected_version, "features": features,
            "transport": transport or self.model_transport, "app": self.app_args([]),
            "http": self.runtime().http_options(), "replicas": self.num_replicas, "code": SERVING_CODE_VERSION,
            **({"access_log": True} if self.access_log else {}),
            # The engine selected_model recorded (the replicas read it from the registry): a
            # version re-checked on new data may change engine without changing version.
            **({"engine": engine} if engine else {}),
        }
        return self.rollout().deploy(
            expected_version, request, lambda: self._prepare(model_uri, expected_version, tracking_uri, features, transport, engine),
            check=check, log=log,
        )

    def _prepare(self, model_uri, expected_version, tracking_uri, features, transport,
                 engine: str | None = None) -> tuple[dict, str | None]:
        """The Serve config for this model, and the URI a replica names when it refuses it:
        everything that can fail before the running API is touched (registry, download)."""
        from mlops_assets.serving import model as model_lib

        source = model_lib.ModelSource(model_uri, tracking_uri)
        if features is None:
            features = [{"name": f.name, "type": f.type} for f in model_lib.features_of(source)]
        if (transport or self.model_transport) == "folder" and not source.is_folder:
            source = self._download(source, expected_version)
        if engine and engine != source.engine:
            # The engine asked for beats the one the registry recorded (tests compare both).
            source = dataclasses.replace(
                source, engine=engine, engine_reason="the deployment asked for scikit-learn" if engine == "sklearn" else None)
        user_config = source.to_config()
        config = serve_deploy.serve_config(self.app_args(features), user_config, self.runtime().http_options(),
                                           num_replicas=self.num_replicas, code_version=SERVING_CODE_VERSION,
                                           access_log=self.access_log)
        return config, user_config.get("model_uri")

    def _download(self, source, version: str):
        """The registry version as a folder under state_dir/models (kept: replicas that
        restart later load it again)."""
        from mlops_assets.serving import model as model_lib

        name = source.model_uri.removeprefix("models:/").split("/")[0].split("@")[0]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name) or ".." in name:
            raise RayServeError(f"model name {name!r} (from {source.model_uri}) is not a usable folder name: "
                                "use letters, digits, '.', '_' and '-' (MLOPS_MODEL_NAME)")
        if not re.fullmatch(r"[0-9]{1,12}", str(version)):
            raise RayServeError(f"model version {version!r} is not a registry version number")
        target = Path(self.state_dir) / "models" / name / version
        if not (target / "MLmodel").is_file():
            staging = target.with_name(f".{version}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            folder, name, _ = model_lib.download(source, staging)
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(target)
            shutil.rmtree(staging, ignore_errors=True)
        # The replicas check the folder against the manifest registered with the version, and
        # serve it with the engine selected_model recorded for it.
        manifest, engine, reason = model_lib.registered_serving(source.tracking_uri, name, version)
        return model_lib.ModelSource(str(target), name=name, version=version, files_sha256=manifest, engine=engine,
                                     engine_reason=reason or None)

    # -- the rollout backend (rollout.RolloutBackend) ------------------------------------------
    def apply(self, config: dict[str, Any]) -> None:
        self._run_deployer("-", "deploying the Serve application", stdin=json.dumps(config))

    def remove(self) -> None:
        self._run_deployer("--delete", "removing the Serve application")

    def gave_up(self) -> str | None:
        status = self.app_status() or {}
        return _status_summary(status) if status.get("status") == "DEPLOY_FAILED" else None

    def logs_hint(self) -> str:
        return f"the replica logs in {self.runtime().ray_dir}/session_latest/logs/serve"

    def readyz(self, timeout: float = 2.0) -> dict[str, Any] | None:
        return self.client().readyz(timeout)

    def app_status(self) -> dict[str, Any] | None:
        """Serve's status of the application (serving/deploy.py `status`), None if unknown."""
        try:
            out = self._run_deployer("--status", "reading the Serve status", timeout=60)
            return json.loads(out.strip().splitlines()[-1])
        except (RayServeError, subprocess.TimeoutExpired, ValueError, IndexError):
            return None

    def wait_ready(self, expected_version: str, timeout_s: float | None = None) -> None:
        self.rollout().wait_ready(expected_version, timeout_s=timeout_s)

    def predict(self, instances: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
        """One POST /predict. Returns (answer, seconds)."""
        return self.client().predict(instances)

    def _run_deployer(self, argument: str, what: str, timeout: float = 300, stdin: str | None = None) -> str:
        env = {**_environ(), **self.runtime().environment()}
        result = subprocess.run(
            [sys.executable, "-m", "mlops_assets.serving.deploy", self.runtime().address, argument],
            env=env, input=stdin, capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            raise RayServeError(f"{what} failed: {result.stderr.strip()[-3000:]}")
        return result.stdout


def _environ() -> dict[str, str]:
    """This process's environment for Ray's processes, without the API keys (the replicas
    read them from the key file; Ray's processes would keep them in their environment)."""
    return {k: v for k, v in os.environ.items() if k != "MLOPS_API_KEYS"}


def _status_summary(status: dict[str, Any]) -> str:
    """Serve's failure message in short: its first line and the exception at its end."""
    messages = [d.get("message") or "" for d in (status.get("deployments") or {}).values()] or [status.get("message") or ""]
    lines = [line.strip() for line in max(messages, key=len).splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} ... {lines[-1]}"


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
