"""The local Ray instance and the prediction API on it, wrapped once.

Starts (or reuses) a single-node Ray instance whose every listener is on loopback, with the
metrics export port fixed, its state under MLOPS_HOME, no dashboard; deploys the Serve
application of `mlops_assets.serving`, waits for `/readyz` to report the expected model
version, and stops everything it started (`make down`).

Failure safety: `state_dir/deployed.json` records the last Serve config that served healthy
(and its model version), written only once a deployment passed its health check. A
deployment whose new version never gets ready, whose apply fails, or whose caller-supplied
check (the smoke prediction) fails is rolled back: that recorded config is applied again and
waited for. Failures before anything is applied (download, bad URI) leave the API untouched.

The Ray instance outlives the Dagster run on purpose: `make run` ends with the API serving.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from mlops_assets import serving
from mlops_assets.serving import deploy as serve_deploy
from mlops_assets.serving.runtime import RayServeRuntime, instance_processes, stop_instance
from mlops_assets.versioning import code_version_of

# The code the replicas run: a change replaces them (serve_config's runtime_env), so a
# developer's edit to mlops_assets/serving reaches the running API on the next deploy.
SERVING_CODE_VERSION = code_version_of(Path(serving.__file__).parent)


# While waiting for a version, how often Serve is asked whether it gave up (a short-lived
# driver process: ~2 s of CPU each time).
STATUS_EVERY_S = 10.0


class RayServeError(RuntimeError):
    """The Ray instance or the API did not come up as asked."""


class DeployFailed(RayServeError):
    """A deployment that failed, and what became of the API (the message says it in words)."""

    def __init__(
        self,
        message: str,
        *,
        version: str,
        reason: str,
        applied: bool,
        rolled_back: bool,
        previous_version: str | None,
        serving: str | None,
    ) -> None:
        super().__init__(message)
        self.version = version  # the version that failed
        self.reason = reason  # why, in one line
        self.applied = applied  # whether its config reached Serve
        self.rolled_back = rolled_back  # whether the previous config serves again
        self.previous_version = previous_version  # the last healthy version on record, if any
        self.serving = serving  # the version /readyz reports now (None: no answer)

    def metadata(self) -> dict[str, Any]:
        return {
            "failed_version": self.version,
            "failure_reason": self.reason,
            "applied": self.applied,
            "rolled_back": self.rolled_back,
            "previous_version": self.previous_version or "none",
            "serving_version": self.serving or "none (the API does not answer /readyz)",
        }


@dataclass(frozen=True)
class Deployment:
    """What `deploy` did: the served version and whether anything changed."""

    name: str
    version: str
    action: str  # "unchanged", "reconfigured" (hot swap), "deployed" (first or rebuilt)
    started_ray: bool
    seconds: float
    previous_version: str | None = None  # the version served before (deployed.json)
    check_result: Any = None  # what `deploy(check=...)` returned


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
    max_rows: int = 1000
    max_body_bytes: int = 1024 * 1024
    ready_timeout_s: float = 240.0
    # How long a rollback may take to report the previous version again (None: ready_timeout_s).
    rollback_timeout_s: float | None = None
    # How replicas get a registry model: "folder" = this resource downloads the version into
    # state_dir/models and replicas load the folder (no MLflow in the replicas: ~100 MiB less
    # each); "registry" = replicas resolve the `models:/` URI with MLflow themselves.
    model_transport: str = "folder"
    metrics_report_interval_ms: int = 10000

    # -- the Ray instance --------------------------------------------------------------------
    def runtime(self) -> RayServeRuntime:
        return RayServeRuntime(
            state_dir=Path(self.state_dir),
            host=self.host,
            api_port=self.api_port,
            metrics_port=self.metrics_port,
            gcs_port=self.gcs_port,
            client_port=self.client_port,
            haproxy_metrics_port=self.haproxy_metrics_port,
            haproxy_stats_port=self.haproxy_stats_port,
            fallback_proxy_port=self.fallback_proxy_port,
            num_cpus=self.num_cpus,
            throughput_optimized=self.throughput_optimized,
            haproxy=self.haproxy,
            replica_port_min=self.replica_port_min,
            replica_port_max=self.replica_port_max,
            metrics_report_interval_ms=self.metrics_report_interval_ms,
        )

    @property
    def api_url(self) -> str:
        return self.runtime().api_url

    @property
    def metrics_url(self) -> str:
        return self.runtime().metrics_url

    def is_running(self) -> bool:
        return bool(instance_processes(self.runtime())) and _port_open(self.host, self.gcs_port)

    def ensure_started(self, log=None) -> bool:
        """Start the Ray instance unless it runs already. Returns True if it was started."""
        runtime = self.runtime()
        if self.is_running():
            return False
        if _port_open(self.host, self.gcs_port):
            raise RayServeError(
                f"port {self.gcs_port} on {self.host} is taken by another program (another Ray?); "
                "stop it or set the ray_serve resource's gcs_port"
            )
        stop_instance(runtime)  # leftovers of a crashed instance of ours
        runtime.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **runtime.environment()}
        started = time.monotonic()
        result = subprocess.run(runtime.start_command(), env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RayServeError(
                f"`ray start` failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n"
                f"Ray's logs are in {runtime.ray_dir}; a port may be taken (gcs {self.gcs_port}, "
                f"metrics {self.metrics_port}, client {self.client_port})"
            )
        if log:
            log.info(f"started Ray on {runtime.address} in {time.monotonic() - started:.1f}s (state {runtime.ray_dir})")
        return True

    def shutdown(self) -> int:
        """Stop the Ray instance, the API and its haproxy. Returns how many processes ended."""
        stopped = stop_instance(self.runtime())
        state = self._state_file()
        if state.exists():
            state.unlink()
        return stopped

    # -- the application ---------------------------------------------------------------------
    def app_args(self, features: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "features": features,
            "max_rows": self.max_rows,
            "max_body_bytes": self.max_body_bytes,
            "batch_max_size": self.batch_max_size,
            "batch_wait_s": self.batch_wait_s,
            "bind_host": self.host,
        }

    def deploy(
        self,
        model_uri: str,
        expected_version: str,
        tracking_uri: str | None = None,
        features: list[dict[str, str]] | None = None,
        log=None,
        transport: str | None = None,
        check: Callable[["RayServe"], Any] | None = None,
    ) -> Deployment:
        """Serve `model_uri` (an MLflow URI pinned to a version, or a model folder) and wait
        until the API reports `expected_version`. Same model and settings as the running API:
        nothing is touched. Same signature, other version: replicas reconfigure in place.

        `check(self)`, if given, runs once the API reports the version (the caller's smoke
        prediction: raise to fail it); what it returns is `Deployment.check_result`. When the
        apply fails, the version never gets ready or `check` fails, the previous healthy config
        is applied again (`DeployFailed` says what was rolled back and why); failures before
        anything is applied leave the API as it was (`DeployFailed`, applied=False)."""
        started = time.monotonic()
        previous = self._read_state()
        # What was asked, before any registry lookup: the same request as the last healthy
        # deployment, with the API serving that version, needs nothing (not even MLflow).
        request = {
            "model_uri": model_uri, "tracking_uri": tracking_uri, "version": expected_version, "features": features,
            "transport": transport or self.model_transport, "app": self.app_args([]),
            "http": self.runtime().http_options(), "replicas": self.num_replicas, "code": SERVING_CODE_VERSION,
        }
        if previous.get("request") == request and self._serves(expected_version):
            return self._unchanged(expected_version, previous, check, log, started)
        try:
            config, source_config = self._prepare(model_uri, expected_version, tracking_uri, features, transport)
            started_ray = self.ensure_started(log)
        except Exception as exc:
            raise self._not_applied(expected_version, previous, _reason(exc)) from exc
        if not started_ray and previous.get("config") == config and self._serves(expected_version):
            self._write_state({**previous, "request": request})
            return self._unchanged(expected_version, previous, check, log, started)
        action = "deployed"
        if not started_ray and previous.get("config"):
            same_app = _app_without_deployments(previous["config"]) == _app_without_deployments(config)
            action = "reconfigured" if same_app else "deployed"
        if log:
            log.info(
                f"applying the Serve config of model version {expected_version} ({action}); "
                f"last healthy version on record: {previous.get('version') or 'none'}"
            )
        try:
            self._apply(config)
            self.wait_ready(expected_version, refused_uri=source_config.get("model_uri"))
            result = check(self) if check is not None else None
        except Exception as exc:
            raise self._roll_back(expected_version, previous, _reason(exc), log) from exc
        # Only now: a run killed before this line leaves the last healthy config on record.
        self._write_state({"config": config, "version": expected_version, "request": request})
        name, version = self._model_ref()
        if log:
            log.info(f"{action}: the API at {self.api_url} serves {name} version {version}")
        return Deployment(
            name, version, action, started_ray, time.monotonic() - started,
            previous_version=previous.get("version"), check_result=result,
        )

    def _unchanged(self, expected_version: str, previous: dict[str, Any], check, log, started: float) -> Deployment:
        """The API already serves this version with these settings: only the health check."""
        if log:
            log.info(f"the API already serves version {expected_version} with these settings: nothing to do")
        result = None
        if check is not None:
            try:
                result = check(self)
            except Exception as exc:
                raise DeployFailed(
                    f"model version {expected_version}, already in service, failed its health check "
                    f"({_reason(exc)}); nothing was changed, so there is nothing to roll back",
                    version=expected_version, reason=_reason(exc), applied=False, rolled_back=False,
                    previous_version=previous.get("version"), serving=expected_version,
                ) from exc
        return Deployment(
            *self._model_ref(), "unchanged", False, time.monotonic() - started,
            previous_version=previous.get("version"), check_result=result,
        )

    def _prepare(self, model_uri, expected_version, tracking_uri, features, transport):
        """The Serve config for this model (and its user_config): everything that can fail
        before the running API is touched (registry lookups, the download)."""
        from mlops_assets.serving import model as model_lib

        source = model_lib.ModelSource(model_uri, tracking_uri)
        if features is None:
            features = [{"name": f.name, "type": f.type} for f in model_lib.features_of(source)]
        if (transport or self.model_transport) == "folder" and not source.is_folder:
            source = self._download(source, expected_version)
        user_config = source.to_config()
        config = serve_deploy.serve_config(
            self.app_args(features),
            user_config,
            self.runtime().http_options(),
            num_replicas=self.num_replicas,
            code_version=SERVING_CODE_VERSION,
        )
        return config, user_config

    def _not_applied(self, version: str, previous: dict[str, Any], reason: str) -> DeployFailed:
        ready = self.readyz()
        serving = ready["model"]["version"] if ready else None
        left = (
            f"the API at {self.api_url} still serves version {serving}, untouched"
            if serving
            else f"the API at {self.api_url} was not answering and was left as it was"
        )
        return DeployFailed(
            f"model version {version} was not deployed ({reason}); nothing was applied: {left}",
            version=version, reason=reason, applied=False, rolled_back=False,
            previous_version=previous.get("version"), serving=serving,
        )

    def _roll_back(self, version: str, previous: dict[str, Any], reason: str, log=None) -> DeployFailed:
        """After a failed deployment: the last healthy config again, or no application at all
        when there is none on record."""
        failed = f"model version {version} failed its health check ({reason})"
        previous_version = previous.get("version")
        common = {"version": version, "reason": reason, "applied": True, "previous_version": previous_version}
        if log:
            log.warning(f"{failed}; rolling back to {('version ' + previous_version) if previous_version else 'nothing'}")
        if not previous.get("config"):
            try:
                self._delete_app()
                left = "the API is left stopped (the failed application was removed)"
            except Exception as exc:
                left = f"removing the failed application failed too ({_reason(exc)}): the API is left unready"
            ready = self.readyz()
            return DeployFailed(
                f"{failed}; nothing to roll back to (no earlier healthy deployment on record in "
                f"{self._state_file()}): {left}",
                rolled_back=False, serving=ready["model"]["version"] if ready else None, **common,
            )
        rolled_back_at = time.monotonic()
        try:
            self._apply(previous["config"])
            self.wait_ready(previous_version, timeout_s=self.rollback_timeout_s or self.ready_timeout_s)
        except Exception as exc:
            ready = self.readyz()
            return DeployFailed(
                f"{failed}; rolling back to version {previous_version} failed too ({_reason(exc)}): the API "
                f"{('serves version ' + ready['model']['version']) if ready else 'does not answer /readyz'}; "
                f"see the replica logs in {self.runtime().ray_dir}/session_latest/logs/serve",
                rolled_back=False, serving=ready["model"]["version"] if ready else None, **common,
            )
        self._write_state(previous)
        if log:
            log.warning(f"rolled back to version {previous_version} in {time.monotonic() - rolled_back_at:.1f}s")
        return DeployFailed(
            f"{failed}; rolled back: the API serves version {previous_version} again",
            rolled_back=True, serving=previous_version, **common,
        )

    def _download(self, source, version: str):
        """The registry version as a folder under state_dir/models (kept: replicas that
        restart later load it again)."""
        from mlops_assets.serving import model as model_lib

        name = source.model_uri.removeprefix("models:/").split("/")[0].split("@")[0]
        target = Path(self.state_dir) / "models" / name / version
        if not (target / "MLmodel").is_file():
            staging = target.with_name(f".{version}.partial")
            shutil.rmtree(staging, ignore_errors=True)
            folder, name, _ = model_lib.download(source, staging)
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            folder.rename(target)
            shutil.rmtree(staging, ignore_errors=True)
        return model_lib.ModelSource(str(target), name=name, version=version)

    def _apply(self, config: dict[str, Any]) -> None:
        path = Path(self.state_dir) / "serve-config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2, sort_keys=True))
        self._run_deployer(str(path), "deploying the Serve application")

    def _delete_app(self) -> None:
        self._run_deployer("--delete", "removing the Serve application")

    def app_status(self) -> dict[str, Any] | None:
        """Serve's status of the application (serving/deploy.py `status`), None if unknown."""
        try:
            out = self._run_deployer("--status", "reading the Serve status", timeout=60)
            return json.loads(out.strip().splitlines()[-1])
        except (RayServeError, subprocess.TimeoutExpired, ValueError, IndexError):
            return None

    def _run_deployer(self, argument: str, what: str, timeout: float = 300) -> str:
        env = {**os.environ, **self.runtime().environment()}
        result = subprocess.run(
            [sys.executable, "-m", "mlops_assets.serving.deploy", self.runtime().address, argument],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RayServeError(f"{what} failed: {result.stderr.strip()[-3000:]}")
        return result.stdout

    # -- readiness ---------------------------------------------------------------------------
    def readyz(self, timeout: float = 2.0) -> dict[str, Any] | None:
        import requests

        try:
            response = requests.get(f"{self.api_url}/readyz", timeout=timeout)
        except requests.RequestException:
            return None
        return response.json() if response.status_code == 200 else None

    def _serves(self, version: str) -> bool:
        ready = self.readyz()
        return bool(ready) and ready["model"]["version"] == version

    def _model_ref(self) -> tuple[str, str]:
        ready = self.readyz() or {"model": {"name": "", "version": ""}}
        return ready["model"]["name"], ready["model"]["version"]

    def wait_ready(self, expected_version: str, timeout_s: float | None = None, refused_uri: str | None = None) -> None:
        """Until /readyz reports `expected_version` on several consecutive calls (with
        several replicas behind haproxy, one answer may come from a replica not yet swapped).
        A replica that reports it refused the model (`rejected`: `refused_uri`, or else the
        version) ends the wait at once: it keeps serving its old model and will not retry. So
        does Serve giving up on the application (DEPLOY_FAILED: replicas that cannot start),
        asked every STATUS_EVERY_S while the version is not there yet."""
        started = time.monotonic()
        deadline = started + (timeout_s or self.ready_timeout_s)
        next_status = started + STATUS_EVERY_S
        streak, last = 0, None
        while time.monotonic() < deadline:
            ready = self.readyz()
            last = ready
            if not (ready and ready["model"]["version"] == expected_version) and time.monotonic() >= next_status:
                self._raise_if_serve_gave_up(expected_version)
                next_status = time.monotonic() + STATUS_EVERY_S
            rejected = (ready or {}).get("rejected")
            if rejected and ready["model"]["version"] != expected_version and (
                rejected.get("model_uri") == refused_uri if refused_uri else rejected.get("version") == expected_version
            ):
                raise RayServeError(
                    f"the replicas could not load model version {expected_version} and kept version "
                    f"{ready['model']['version']}: {rejected.get('error')}"
                )
            if ready and ready["model"]["version"] == expected_version:
                streak += 1
                if streak >= 4 * self.num_replicas:
                    return
            else:
                streak = 0
            time.sleep(0.25)
        self._raise_if_serve_gave_up(expected_version)
        raise RayServeError(
            f"the API at {self.api_url} did not report model version {expected_version} within "
            f"{timeout_s or self.ready_timeout_s:.0f}s (last /readyz: {last}); see the replica logs in "
            f"{self.runtime().ray_dir}/session_latest/logs/serve"
        )

    def _raise_if_serve_gave_up(self, version: str) -> None:
        status = self.app_status() or {}
        if status.get("status") == "DEPLOY_FAILED":
            raise RayServeError(f"Serve gave up starting the replicas of model version {version}: {_status_summary(status)}")

    def predict(self, instances: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
        """One POST /predict. Returns (answer, seconds)."""
        import requests

        started = time.perf_counter()
        response = requests.post(f"{self.api_url}/predict", json={"instances": instances}, timeout=30)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            raise RayServeError(f"POST /predict answered {response.status_code}: {response.text[:1000]}")
        return response.json(), seconds

    # -- bookkeeping -------------------------------------------------------------------------
    def _state_file(self) -> Path:
        return Path(self.state_dir) / "deployed.json"

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_file().read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        # Atomically: a run killed mid-write must leave the last healthy record, not half of one.
        partial = self._state_file().with_name(".deployed.json.partial")
        partial.write_text(json.dumps(state, indent=2, sort_keys=True))
        partial.replace(self._state_file())


def _status_summary(status: dict[str, Any]) -> str:
    """Serve's failure message in short: its first line and the exception at its end."""
    messages = [d.get("message") or "" for d in (status.get("deployments") or {}).values()] or [status.get("message") or ""]
    lines = [line.strip() for line in max(messages, key=len).splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} ... {lines[-1]}"


def _reason(exc: BaseException) -> str:
    """An exception as one short line for a failure message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (RayServeError, AssertionError)):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 600 else text[:600] + " ..."


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _app_without_deployments(config: dict[str, Any]) -> dict[str, Any]:
    """The application part of a Serve config that a user_config change leaves alone: when it
    is equal, a new model is a hot swap (reconfigure); otherwise Serve replaces the replicas."""
    app = dict(config["applications"][0])
    app.pop("deployments", None)
    return app
