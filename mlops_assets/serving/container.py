"""The prediction API inside a container: `python -m mlops_assets.serving.container` (the
entrypoint of docker/api.Dockerfile); `... container healthcheck` is its HEALTHCHECK.

Starts a single-node Ray instance (runtime.py: the same fast-path settings as the local
target) whose every listener is on loopback, serves the MLflow model folder baked into the
image, and opens exactly two ports on MLOPS_API_HOST (default 0.0.0.0, so that published
ports work): the API, which is haproxy's frontend (the haproxy shim moves only that one bind
off loopback), and the metrics, a small TCP forwarder to Ray's exporter on loopback. GCS,
raylet, workers, replicas, haproxy's stats and metrics stay on 127.0.0.1.

Stays in the foreground while Ray runs and exits when Ray exits (the container's restart
policy takes over); SIGTERM stops Ray and exits 0. As PID 1 it forks once and reaps the
orphans that Ray's daemons leave, so the image needs no init binary.

Settings (environment; the image sets the first one):

    MLOPS_MODEL_DIR             the MLflow model folder to serve (/opt/model in the image)
    MLOPS_MODEL_VERSION         if set, the version the folder must hold (exit 2 otherwise)
    MLOPS_MODEL_FILE            (instead of the two above) a JSON file naming the model to serve:
                                {"dir", "name", "version", "files_sha256", "engine",
                                "engine_reason"}; read at start and by `apply`, so that a new
                                model reaches the running replicas through Serve's in-place
                                reconfigure (the folder mounted read-only from the host)
    MLOPS_API_HOST              address of the two public ports (0.0.0.0)
    MLOPS_API_PORT              API port (8000)
    MLOPS_METRICS_PORT          metrics port (8080): Prometheus text, Ray's and the API's series
    MLOPS_RAY_METRICS_PORT      Ray's own exporter on loopback, behind the forwarder (9180)
    MLOPS_NUM_REPLICAS          Serve replicas (2)
    MLOPS_NUM_CPUS              CPUs Ray may use (the container's count)
    MLOPS_MAX_ROWS, MLOPS_MAX_BODY_BYTES, MLOPS_BATCH_MAX_SIZE, MLOPS_BATCH_WAIT_S   see app.py
    MLOPS_HAPROXY               1 (default): haproxy in front of the replicas; 0: Serve's proxy
    MLOPS_OBJECT_STORE_BYTES    Ray's object store (128 MiB; the API passes no large objects)
    MLOPS_STATE_DIR             Ray's and haproxy's files (/tmp/mlops-serving)
    MLOPS_API_TIMEOUTS          client=30,server=60,connect=5,http_request=10,request=30 (seconds; any of them)
    MLOPS_API_KEY_FILE          a file of API keys (bind-mounted read-only): /predict then needs
                                `Authorization: Bearer <key>` (docs/security.md)
    MLOPS_API_KEYS              the keys themselves, comma-separated (prefer the file: an
                                environment variable shows in `docker inspect`)
    MLOPS_API_ACCESS_LOG        1: Serve's per-request access log in the replicas' logs (0)
    MLOPS_FORWARD_MAX_CONNECTIONS, MLOPS_FORWARD_IDLE_S   the metrics forwarder's bounds (64, 60)

A Ray cluster across API hosts (the container runs with the host's network):

    MLOPS_RAY_ROLE              single (default: the single-node instance above), head or worker
    MLOPS_RAY_NODE_IP           this host's address, which the other API hosts reach
    MLOPS_RAY_HEAD_ADDRESS      the head's address (a worker joins it)
    MLOPS_RAY_PORTS             Ray's ports, as infra_tf's ray_ports: name=port,... (RAY_PORTS)
    MLOPS_AUTOSCALING           Serve's autoscaling: min=1,max=4,target=2,per_node=1 (replicas,
                                ongoing requests per replica, replicas per node at most)
    MLOPS_AUTOSCALING_FILE      a file holding the same (read instead, at start and by `apply`)
    RAY_AUTH_TOKEN_PATH         the cluster's token file (required: RAY_AUTH_MODE=token)

Ray's GCS fault tolerance (optional): the head keeps the cluster's state in an external Redis,
so that the workers serve on while the head restarts, and the restarted head resumes it.

    RAY_REDIS_ADDRESS           (head) Redis, host:port; Ray's own variable
    RAY_external_storage_namespace   (head) the cluster's key prefix in Redis; Ray's own
    MLOPS_RAY_REDIS_PASSWORD_FILE    (head) a file holding Redis' password (mounted read-only);
                                Ray takes it on the command line only (`ray start
                                --redis-password`), which its GCS process shows in `ps`
    RAY_gcs_rpc_server_reconnect_timeout_s   (every node) how long a node waits for a
                                restarting head before it exits (Ray's default 60)

The head deploys the application once for the cluster (Serve runs a proxy on every node that
holds a replica, so every API host answers on the API port when min >= the API hosts); a
worker joins the head and serves the replicas Serve places on it. `... container apply`, run
in the head's container (`docker exec`), applies the application's config again with the
settings read afresh (the autoscaling file): Serve updates the running deployment in place.
Ray's ports (MLOPS_RAY_PORTS) listen on MLOPS_RAY_NODE_IP and HAProxy's stats and metrics stay
on loopback. Serve binds its HTTP listeners on every interface in a cluster (each replica's
own port must take requests from every node's HAProxy), so its fallback proxy (8500) does too,
and so does Ray's exporter (MLOPS_RAY_METRICS_PORT): the API hosts' security group keeps them
closed (the rehearsal probes every listening port against it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import deploy as serve_deploy
from . import model as model_lib
from .runtime import RayServeRuntime, parse_api_timeouts, parse_flag, stop_instance, write_private_file

LOOPBACK = "127.0.0.1"
ROLES = ("single", "head", "worker")
# In the state folder once `container drain` ran: Ray's exit is then expected, not a failure.
DRAINED_MARK = "drained"
# Ray's ports on a cluster node: infra_tf's ray_ports (variables.tf), the same defaults.
RAY_PORTS = {"gcs": 6379, "client": 10001, "node_manager": 6380, "object_manager": 6381, "dashboard_agent_grpc": 6382,
             "dashboard_agent_listen": 52365, "runtime_env_agent": 6383, "metrics_export": 6384,
             "min_worker": 10002, "max_worker": 10100, "serve_replica_min": 30000, "serve_replica_max": 31000}
AUTOSCALING = {"min": 1, "max": 4, "target": 2, "per_node": 1}


def parse_named_numbers(name: str, raw: str, defaults: dict, example: str) -> dict:
    """NAME=a=1,b=2 into `defaults` with the named ones moved; SystemExit names what to fix."""
    values = dict(defaults)
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        key, _, value = item.partition("=")
        if key.strip() not in defaults:
            raise SystemExit(f"{name} names {key.strip()!r}; use any of {', '.join(defaults)} (e.g. {example})")
        try:
            values[key.strip()] = int(value)
            if values[key.strip()] < 0:
                raise ValueError
        except ValueError:
            raise SystemExit(f"{name}: {item!r} is not {key.strip()}=NUMBER (e.g. {example})") from None
    return values


@dataclass(frozen=True)
class ContainerSettings:
    model_dir: Path
    expected_version: str | None
    public_host: str
    api_port: int
    metrics_port: int
    ray_metrics_port: int
    num_replicas: int
    num_cpus: int
    haproxy: bool
    object_store_bytes: int
    state_dir: Path
    app_options: dict
    timeouts: dict
    api_key_file: Path | None = None
    api_keys: tuple = ()
    forward_max_connections: int = 64
    forward_idle_s: float = 60.0
    access_log: bool = False
    ray_role: str = "single"
    node_ip: str = ""
    head_address: str = ""
    ray_ports: tuple = ()
    autoscaling: tuple = ()
    redis_password_file: str = ""
    # MLOPS_MODEL_FILE's model (a folder with its manifest and engine), else None: the image's.
    model: model_lib.ModelSource | None = None

    @property
    def cluster(self) -> bool:
        return self.ray_role != "single"

    def __repr__(self) -> str:  # never the keys
        return f"ContainerSettings(model_dir={self.model_dir!r}, api_keys={len(self.api_keys)})"

    @classmethod
    def from_env(cls, env=os.environ) -> "ContainerSettings":
        def number(name: str, default, kind=int):
            raw = env.get(name)
            try:
                return kind(raw) if raw not in (None, "") else default
            except ValueError:
                raise SystemExit(f"{name}={raw!r} is not a number (default {default})") from None

        def flag(name: str, default: bool) -> bool:
            try:
                return parse_flag(env.get(name), default, name)
            except ValueError as exc:
                raise SystemExit(str(exc)) from None

        try:
            timeouts = parse_api_timeouts(env.get("MLOPS_API_TIMEOUTS") or "")
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        options = {
            "max_rows": number("MLOPS_MAX_ROWS", 1000),
            "max_body_bytes": number("MLOPS_MAX_BODY_BYTES", 1024 * 1024),
            "batch_max_size": number("MLOPS_BATCH_MAX_SIZE", 16),
            "batch_wait_s": number("MLOPS_BATCH_WAIT_S", 0.002, float),
        }
        role = (env.get("MLOPS_RAY_ROLE") or "single").strip()
        if role not in ROLES:
            raise SystemExit(f"MLOPS_RAY_ROLE={role!r}: use single, head or worker")
        node_ip, head = (env.get("MLOPS_RAY_NODE_IP") or "").strip(), (env.get("MLOPS_RAY_HEAD_ADDRESS") or "").strip()
        ports = parse_named_numbers("MLOPS_RAY_PORTS", env.get("MLOPS_RAY_PORTS") or "", RAY_PORTS, "gcs=6379,min_worker=10002")
        scaling_name, scaling_raw = "MLOPS_AUTOSCALING", env.get("MLOPS_AUTOSCALING") or ""
        if env.get("MLOPS_AUTOSCALING_FILE"):
            scaling_name = f"MLOPS_AUTOSCALING_FILE ({env['MLOPS_AUTOSCALING_FILE']})"
            try:
                scaling_raw = Path(env["MLOPS_AUTOSCALING_FILE"]).read_text().strip()
            except OSError as exc:
                raise SystemExit(f"{scaling_name} cannot be read ({exc.strerror}): mount the file there") from None
        scaling = parse_named_numbers(scaling_name, scaling_raw, AUTOSCALING, "min=1,max=4")
        if role != "single":
            if not node_ip:
                raise SystemExit(f"MLOPS_RAY_ROLE={role} needs MLOPS_RAY_NODE_IP, this host's address the other API hosts reach")
            if role == "worker" and not head:
                raise SystemExit("MLOPS_RAY_ROLE=worker needs MLOPS_RAY_HEAD_ADDRESS, the head's address")
            token = env.get("RAY_AUTH_TOKEN_PATH") or ""
            if not token or not os.path.isfile(token):
                raise SystemExit(f"MLOPS_RAY_ROLE={role} needs RAY_AUTH_TOKEN_PATH, the cluster's token file "
                                 f"(mounted read-only){': ' + token + ' is not a file' if token else ''}")
            if role == "head" and env.get("MLOPS_RAY_REDIS_PASSWORD_FILE"):
                if not env.get("RAY_REDIS_ADDRESS"):
                    raise SystemExit("MLOPS_RAY_REDIS_PASSWORD_FILE is set but RAY_REDIS_ADDRESS is not: "
                                     "name the Redis that keeps the cluster's state (host:port)")
                if not os.path.isfile(env["MLOPS_RAY_REDIS_PASSWORD_FILE"]):
                    raise SystemExit(f"MLOPS_RAY_REDIS_PASSWORD_FILE={env['MLOPS_RAY_REDIS_PASSWORD_FILE']} is not a "
                                     "file: mount the file holding Redis' password there")
            if not 1 <= scaling["min"] <= scaling["max"] or scaling["target"] < 1 or scaling["per_node"] < 1:
                raise SystemExit(f"MLOPS_AUTOSCALING: need 1 <= min <= max, target >= 1 and per_node >= 1, not {scaling}")
        model = read_model_file(env["MLOPS_MODEL_FILE"]) if env.get("MLOPS_MODEL_FILE") else None
        return cls(
            model=model,
            ray_role=role, node_ip=node_ip, head_address=head if role == "worker" else node_ip,
            redis_password_file=(env.get("MLOPS_RAY_REDIS_PASSWORD_FILE") or "") if role == "head" else "",
            ray_ports=tuple(ports.items()), autoscaling=tuple(scaling.items()),
            model_dir=Path(model.model_uri if model else env.get("MLOPS_MODEL_DIR") or "/opt/model"),
            expected_version=model.version if model else env.get("MLOPS_MODEL_VERSION") or None,
            public_host=env.get("MLOPS_API_HOST") or "0.0.0.0",
            api_port=number("MLOPS_API_PORT", 8000),
            metrics_port=number("MLOPS_METRICS_PORT", 8080),
            ray_metrics_port=number("MLOPS_RAY_METRICS_PORT", 9180),
            num_replicas=number("MLOPS_NUM_REPLICAS", 2),
            num_cpus=number("MLOPS_NUM_CPUS", os.cpu_count() or 1),
            haproxy=(env.get("MLOPS_HAPROXY") or "1") not in ("0", "false", "no"),
            object_store_bytes=number("MLOPS_OBJECT_STORE_BYTES", 128 * 1024 * 1024),
            state_dir=Path(env.get("MLOPS_STATE_DIR") or "/tmp/mlops-serving"),
            app_options=options,
            timeouts=timeouts,
            api_key_file=Path(env["MLOPS_API_KEY_FILE"]) if env.get("MLOPS_API_KEY_FILE") else None,
            api_keys=tuple(k.strip() for k in (env.get("MLOPS_API_KEYS") or "").split(",") if k.strip()),
            forward_max_connections=number("MLOPS_FORWARD_MAX_CONNECTIONS", 64),
            forward_idle_s=number("MLOPS_FORWARD_IDLE_S", 60.0, float),
            access_log=flag("MLOPS_API_ACCESS_LOG", False),
        )

    @property
    def internal_api_port(self) -> int:
        """Where Serve's own proxy listens when haproxy is off (then forwarded like metrics)."""
        return self.api_port if self.haproxy else self.api_port + 10000


@dataclass(frozen=True)
class ContainerRuntime(RayServeRuntime):
    """RayServeRuntime with one public bind: haproxy's API frontend on `public_host`."""

    public_host: str = "0.0.0.0"

    def shim_text(self, real: str) -> str:
        text = super().shim_text(real)
        # After the shim's own rewrite (every `bind *:PORT` to loopback), move the API
        # frontend's bind, and only it, to the public address.
        public = (
            f"    sed -i -E 's/^([[:space:]]*bind[[:space:]]+){self.listen_host}:{self.api_port}([^0-9]|$)/"
            f"\\1{self.public_host}:{self.api_port}\\2/' \"$arg\"\n"
        )
        lines = text.splitlines(keepends=True)
        at = next(i for i, line in enumerate(lines) if line.strip().startswith("sed -i"))
        lines.insert(at + 1, public)
        return "".join(lines)


MODEL_FILE_KEYS = ("dir", "name", "version", "files_sha256", "engine", "engine_reason")


def read_model_file(path: str) -> model_lib.ModelSource:
    """MLOPS_MODEL_FILE: the model to serve, as the `api` role writes it on the head. Errors
    name the file and the key to fix."""
    where = f"MLOPS_MODEL_FILE ({path})"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise SystemExit(f"{where} cannot be read ({exc.strerror}): mount the file there") from None
    except ValueError as exc:
        raise SystemExit(f"{where} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"{where} must be a JSON object with the keys {', '.join(MODEL_FILE_KEYS)}")
    unknown = sorted(set(data) - set(MODEL_FILE_KEYS))
    if unknown:
        raise SystemExit(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(MODEL_FILE_KEYS)}")
    for key in ("dir", "version", "files_sha256"):
        if not data.get(key) or not isinstance(data[key], str):
            raise SystemExit(f"{where} needs `{key}` (a non-empty string)")
    if not data["dir"].startswith("/"):
        raise SystemExit(f"{where}: `dir` must be an absolute path in the container, not {data['dir']!r}")
    return model_lib.ModelSource(model_uri=data["dir"], name=data.get("name") or None, version=data["version"],
                                 files_sha256=data["files_sha256"], engine=data.get("engine") or None,
                                 engine_reason=data.get("engine_reason") or None)


def runtime_for(settings: ContainerSettings) -> ContainerRuntime:
    ports = dict(settings.ray_ports) or RAY_PORTS
    cluster = {
        "node_role": settings.ray_role, "head_host": settings.head_address, "cluster_ports": tuple(ports.items()),
        "redis_password_file": settings.redis_password_file,
        "gcs_port": ports["gcs"], "client_port": ports["client"],
        "replica_port_min": ports["serve_replica_min"], "replica_port_max": ports["serve_replica_max"],
    } if settings.cluster else {}
    return ContainerRuntime(
        **cluster,
        state_dir=settings.state_dir,
        host=settings.node_ip if settings.cluster else LOOPBACK,
        api_port=settings.internal_api_port,
        metrics_port=settings.ray_metrics_port,
        num_cpus=settings.num_cpus,
        haproxy=settings.haproxy,
        public_host=settings.public_host,
        timeout_client_s=settings.timeouts["client"], timeout_server_s=settings.timeouts["server"],
        timeout_connect_s=settings.timeouts["connect"], timeout_http_request_s=settings.timeouts["http_request"],
        request_timeout_s=settings.timeouts["request"],
    )


def serve_config_for(settings: ContainerSettings, runtime: RayServeRuntime) -> dict:
    features = [{"name": f.name, "type": f.type} for f in model_lib.features_of_folder(settings.model_dir)]
    args = {"features": features, "bind_host": LOOPBACK, **settings.app_options}
    if settings.cluster:
        args["served_by_header"] = True  # X-Served-By: the node of the replica that answered
    key_file = api_key_file(settings)
    if key_file:
        args["api_key_file"] = str(key_file)
    scaling = dict(settings.autoscaling)
    return serve_deploy.serve_config(
        args,
        (settings.model or model_lib.ModelSource(str(settings.model_dir))).to_config(),
        runtime.http_options(),
        num_replicas=settings.num_replicas,
        access_log=settings.access_log,
        # A cluster: as many replicas as the load needs between min and max, spread over the
        # nodes (Serve's default SPREAD), at most `per_node` on one node: a replica beyond
        # what the nodes take waits for a node (one that joins gets it).
        **({"autoscaling": {"min_replicas": scaling["min"], "max_replicas": scaling["max"],
                            "target_ongoing_requests": scaling["target"]},
            "max_replicas_per_node": scaling["per_node"]} if settings.cluster else {}),
    )


def api_key_file(settings: ContainerSettings) -> Path | None:
    """The file the replicas read the keys from: MLOPS_API_KEY_FILE, or MLOPS_API_KEYS written
    to a 0600 file in the state folder."""
    if settings.api_keys:
        return write_private_file(settings.state_dir, "api-keys", "\n".join(settings.api_keys) + "\n")
    if settings.api_key_file and not settings.api_key_file.is_file():
        raise SystemExit(f"MLOPS_API_KEY_FILE={settings.api_key_file} is not a file: mount the key file there")
    return settings.api_key_file


class Forwarder:
    """TCP forwarding from a public port to a loopback one (the metrics port; the API too when
    haproxy is off). Threads: scrapes are few and small. Bounded: at most `max_connections`
    pairs at once (a connection beyond waits up to `slot_wait_s` for a slot, then is closed),
    each side dropped after `idle_s` without data; an accept error is logged and accepting
    goes on (a failed forwarder would leave /metrics dead while /readyz passes)."""

    def __init__(self, host: str, port: int, target_port: int, max_connections: int = 64, idle_s: float = 60.0,
                 slot_wait_s: float = 5.0) -> None:
        self.port, self.target_port = port, target_port
        self.max_connections, self.idle_s, self.slot_wait_s = max_connections, idle_s, slot_wait_s
        self.server = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.thread = threading.Thread(target=self._accept, daemon=True, name=f"forward-{port}")
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self.active = self.peak = self.accept_errors = self.refused = 0

    def start(self) -> "Forwarder":
        self.thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError as exc:  # EMFILE, ENOBUFS, ECONNABORTED...: log and go on
                self.accept_errors += 1
                _log(f"forwarder :{self.port}: accept failed ({exc}); still accepting")
                time.sleep(0.1)  # no busy loop while the cause lasts
                continue
            if not self._slots.acquire(timeout=self.slot_wait_s):
                self.refused += 1
                client.close()
                continue
            try:
                threading.Thread(target=self._pair, args=(client,), daemon=True).start()
            except RuntimeError as exc:  # no thread to be had
                _log(f"forwarder :{self.port}: {exc}; connection closed")
                client.close()
                self._slots.release()

    def _pair(self, client: socket.socket) -> None:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            client.settimeout(self.idle_s)
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
            except OSError:
                client.close()
                return
            upstream.settimeout(self.idle_s)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join()
        finally:
            with self._lock:
                self.active -= 1
            self._slots.release()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:  # a timeout too: the pair is idle
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _log(message: str) -> None:
    print(f"mlops-api: {message}", file=sys.stderr, flush=True)


def _wait_port(port: int, timeout_s: float, process: subprocess.Popen, host: str = LOOPBACK,
               what: str = "Ray's GCS") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"Ray exited with status {process.returncode} while starting")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not open {host}:{port} within {timeout_s:.0f}s")


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived."""


def serve(settings: ContainerSettings) -> int:
    model = settings.model
    loaded = model_lib.load_folder(settings.model_dir, **({
        "name": model.name, "version": model.version, "files_sha256": model.files_sha256, "engine": model.engine,
        "engine_reason": model.engine_reason} if model else {}))
    if settings.expected_version and loaded.version != settings.expected_version:
        _log(f"the image holds model {loaded.name} version {loaded.version}, not MLOPS_MODEL_VERSION="
             f"{settings.expected_version}: run the image built for that version")
        return 2
    _log(f"serving {loaded.name} version {loaded.version} from {settings.model_dir}")
    del loaded

    runtime = runtime_for(settings)
    env = {**os.environ, **runtime.environment()}  # creates the private folders
    env.pop("MLOPS_API_KEYS", None)  # Ray's processes need not see them (the replicas read the file)
    command = [*runtime.start_command(), "--block", f"--object-store-memory={settings.object_store_bytes}"]
    started = time.monotonic()
    ray = subprocess.Popen(command, env=env)

    def stop(signum, _frame) -> None:
        # Not `ray start`'s own SIGTERM handling: it drains for 30 s, longer than an engine's
        # default stop timeout (10 s). The replicas hold no state worth draining. Raised, so
        # that a stop during start-up (waiting for GCS, deploying) is not delayed either.
        _log(f"signal {signum}: stopping Ray")
        raise _Stopped()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if settings.ray_role == "worker":
            # Joined once this node's raylet listens; the head places replicas here.
            _wait_port(runtime.cluster_port("node_manager"), 120, ray, settings.node_ip, "this node's raylet")
            Forwarder(settings.public_host, settings.metrics_port, settings.ray_metrics_port,
                      max_connections=settings.forward_max_connections, idle_s=settings.forward_idle_s).start()
            _log(f"joined the Ray cluster of {runtime.address} as {settings.node_ip} in "
                 f"{time.monotonic() - started:.1f}s: API http://{settings.public_host}:{settings.api_port} once "
                 f"Serve's proxy runs here, metrics :{settings.metrics_port}/metrics")
            while ray.poll() is None:
                time.sleep(0.5)
            _log(f"Ray exited with status {ray.returncode}")
            if (settings.state_dir / DRAINED_MARK).exists():
                # Drained (`container drain`): the node left the cluster on purpose. Exiting
                # would make the engine restart the container, and the node join again.
                _log("this node was drained: waiting to be stopped")
                while True:
                    time.sleep(3600)
            return 1
        _wait_port(runtime.gcs_port, 120, ray, runtime.host)
        if deploy_application(settings, runtime, env) != 0:
            _log("deploying the application failed (see above)")
            return 1
        bounds = {"max_connections": settings.forward_max_connections, "idle_s": settings.forward_idle_s}
        Forwarder(settings.public_host, settings.metrics_port, settings.ray_metrics_port, **bounds).start()
        if not settings.haproxy:
            Forwarder(settings.public_host, settings.api_port, settings.internal_api_port, **bounds).start()
        _log(f"deployed in {time.monotonic() - started:.1f}s: API http://{settings.public_host}:{settings.api_port} "
             f"(/readyz once the replicas have loaded the model), metrics :{settings.metrics_port}/metrics")
        while ray.poll() is None:
            time.sleep(0.5)
        _log(f"Ray exited with status {ray.returncode}")
        return 1
    except _Stopped:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_instance(runtime, timeout_s=5)
        if ray.poll() is None:
            ray.kill()
            ray.wait()


def deploy_application(settings: ContainerSettings, runtime: ContainerRuntime, env: dict) -> int:
    """Apply the Serve config of `settings` to the running Ray instance (its own process: no
    driver is held); the exit status of that process."""
    path = settings.state_dir / "serve-config.json"
    path.write_text(json.dumps(serve_config_for(settings, runtime), indent=2))
    return subprocess.run([sys.executable, "-m", "mlops_assets.serving.deploy", runtime.address, str(path)], env=env).returncode


def apply(env=os.environ) -> int:
    """`container apply` in a running head's container: the application's config again, from
    the settings read now (a changed autoscaling file); Serve changes the running deployment
    in place (a new min or max starts or stops replicas; the others keep serving)."""
    settings = ContainerSettings.from_env(env)
    if settings.ray_role != "head":
        print(f"container apply runs in the head's container (MLOPS_RAY_ROLE=head), not {settings.ray_role}", file=sys.stderr)
        return 2
    runtime = runtime_for(settings)
    status = deploy_application(settings, runtime, {**env, **runtime.environment()})
    model = f" with model {settings.model.name} version {settings.model.version}" if settings.model else ""
    _log(f"applied {dict(settings.autoscaling)}{model}" if status == 0 else "applying the config failed (see above)")
    return status


def drain(step: str, env=os.environ) -> int:
    """`container drain request|wait` in a worker's running container, before its host goes
    (serving/drain.py has the order): `request` asks Ray to drain this node, `wait` waits
    until its replicas are gone. After `request` the container idles when Ray leaves, until
    it is stopped."""
    from . import drain as drain_lib

    settings = ContainerSettings.from_env(env)
    if settings.ray_role != "worker":
        print(f"container drain runs in a worker's container (MLOPS_RAY_ROLE=worker), not {settings.ray_role}: "
              "the head holds the cluster's control plane", file=sys.stderr)
        return 2
    if step == "wait":
        return drain_lib.wait_until_drained(log=_log)
    runtime = runtime_for(settings)
    (settings.state_dir / DRAINED_MARK).touch()
    return drain_lib.request_drain(runtime.address, settings.node_ip, {**env, **runtime.environment()}, log=_log)


def healthcheck(env=os.environ) -> int:
    """Exit 0 when /readyz answers 200 on loopback and the metrics port answers through its
    forwarder (the HEALTHCHECK of the image)."""
    port = env.get("MLOPS_API_PORT") or "8000"
    host = env.get("MLOPS_API_HOST") or "0.0.0.0"
    metrics = f"http://{LOOPBACK if host in ('0.0.0.0', '::') else host}:{env.get('MLOPS_METRICS_PORT') or '8080'}/metrics"
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/readyz", timeout=3) as response:
            if response.status != 200:
                return 1
        with urllib.request.urlopen(metrics, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


def _as_init(main) -> int:
    """PID 1 in a container: run `main` in a child, reap every orphan, pass signals on."""
    child = os.fork()
    if child == 0:
        os._exit(main())
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda s, _f: os.kill(child, s))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == child:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1


def wait_version(version: str, nodes: list[str], env=os.environ) -> int:
    """`container wait-version VERSION NODE...` in the head's container after an in-place model
    update: through this node's proxy, a replica on every listed node must answer VERSION (0);
    a replica that refused it, or a node whose replicas do not (1, naming them), and the api
    role rolls the model back."""
    from .client import nodes_serving

    port = env.get("MLOPS_API_PORT") or "8000"
    seen, rejected = nodes_serving(f"http://127.0.0.1:{port}", version, nodes)
    if rejected:
        print(f"a replica refused model version {version}: {rejected.get('error')}", file=sys.stderr)
        return 1
    missing = {node: seen.get(node, "no answer") for node in nodes if seen.get(node) != str(version)}
    if missing:
        print(f"not every node serves model version {version}: {json.dumps(missing)}", file=sys.stderr)
        return 1
    print(f"every node ({', '.join(nodes)}) serves model version {version}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wait-version"] and len(argv) >= 3:
        return wait_version(argv[1], argv[2:])
    if argv[:1] == ["healthcheck"]:
        return healthcheck()
    if argv[:1] == ["apply"]:
        return apply()
    if argv[:1] == ["drain"] and argv[1:] in (["request"], ["wait"]):
        return drain(argv[1])
    if argv:
        print("usage: python -m mlops_assets.serving.container [healthcheck | apply | drain request|wait | wait-version VERSION NODE...]", file=sys.stderr)
        return 2
    settings = ContainerSettings.from_env()
    if os.getpid() == 1:
        return _as_init(lambda: serve(settings))
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
