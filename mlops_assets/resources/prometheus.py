"""The local Prometheus, wrapped once: Debian's `prometheus` binary run as the current user.

`make run` (local target) starts it on 127.0.0.1:9090 with the configuration and alert rules
that the `dashboards` asset rendered, its data under MLOPS_HOME; re-rendering reloads it in
place (`/-/reload`, enabled by --web.enable-lifecycle; SIGHUP as a fallback); `make down`
stops it. `promtool` checks the configuration and the rules, and runs the rules' unit tests.

Beside it, on loopback, run a node_exporter (the hosts dashboard) and a Pushgateway (Debian's
`prometheus-pushgateway`): the pipeline's assets are batch steps that cannot be scraped, so each
materialization pushes its metrics there (monitoring/pipeline_metrics.py) and Prometheus scrapes
the gateway with `honor_labels`. The gateway keeps what was pushed in a persistence file in
this resource's state folder, so a restart (`make down`, `make run`) keeps the counters. It is
started with Prometheus, or before it by `cli run` (a cold run pushes from `dataset` before
`dashboards` starts Prometheus), and stopped with it. And an Alertmanager (Debian's
`prometheus-alertmanager`), to which Prometheus sends its alerts: configured with the file the
`dashboards` asset rendered (monitoring/alertmanager_config.py), its silences and notification
log in this resource's state folder, gossip off (one instance); reloaded with Prometheus.

The binary and promtool come from Debian's package (scripts/setup_prometheus.sh, called by
`make run` and `make test`); the binary itself needs no root. The process is found again by
its pid file and its command line (our config path), never by name, so another Prometheus on
the machine is left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import dagster as dg

SETUP_HINT = ("install it with scripts/setup_prometheus.sh (as root: Debian's `prometheus` and `prometheus-alertmanager` "
              "packages), then retry")


class PrometheusError(RuntimeError):
    """Prometheus or promtool failed; the message says what to do."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise PrometheusError(f"`{name}` is not on PATH; {SETUP_HINT}")
    return found


class _CheckTool:
    """A checking command line tool (promtool, amtool)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def run(self, *args: str, cwd: str | Path | None = None) -> str:
        """Run the tool; raise with its own output when it fails. Returns its output."""
        result = subprocess.run([_binary(self.binary), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            raise PrometheusError(f"`{Path(self.binary).name} {' '.join(args)}` failed:\n{output}")
        return output


class Promtool(_CheckTool):
    """promtool: checks the configuration and rules, runs the alert rules' unit tests."""

    def __init__(self, binary: str = "promtool") -> None:
        super().__init__(binary)

    def check_config(self, config_file: str | Path) -> str:
        """`promtool check config` (also checks every rule file the config names)."""
        return self.run("check", "config", str(config_file))

    def check_rules(self, *rule_files: str | Path) -> str:
        return self.run("check", "rules", *map(str, rule_files))

    def test_rules(self, *test_files: str | Path) -> str:
        """`promtool test rules`: alert unit tests; paths inside a test file are relative to it."""
        return self.run("test", "rules", *map(str, test_files))


class Amtool(_CheckTool):
    """amtool (Debian's `prometheus-alertmanager`): checks Alertmanager's configuration."""

    def __init__(self, binary: str = "amtool") -> None:
        super().__init__(binary)

    def check_config(self, config_file: str | Path) -> str:
        return self.run("check-config", str(config_file))


class PrometheusHttp:
    """Prometheus's HTTP API at `url` (any Prometheus: the local one, the monitoring host's)."""

    def __init__(self, url: str, timeout_s: float = 30.0, auth: tuple[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.auth = auth  # (user, password): the monitoring host's basic auth

    def api(self, path: str, **params: Any) -> Any:
        import requests

        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=self.timeout_s, auth=self.auth)
        if response.status_code == 401:
            raise PrometheusError(f"Prometheus at {self.url} refused the credentials (HTTP 401): "
                                  "check MLOPS_PROMETHEUS_PASSWORD against the monitoring host's")
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"GET /api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; raises PrometheusError on a parse or evaluation error."""
        data = self.api("query", query=expr)
        result = data["result"]
        return result if data["resultType"] == "vector" else [{"value": result}]

    def series(self, selector: str, lookback_s: float = 600) -> list[dict[str, str]]:
        now = time.time()
        return self.api("series", **{"match[]": selector, "start": now - lookback_s, "end": now})

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]

    def targets_up(self, job: str | None = None) -> dict[str, bool]:
        """scrape URL -> whether its last scrape succeeded (of `job`, or of every job)."""
        return {t["scrapeUrl"]: t["health"] == "up" for t in self.targets() if job is None or t["labels"].get("job") == job}

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def wait_until(self, predicate, timeout_s: float, what: str, interval_s: float = 0.5):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval_s)
        raise PrometheusError(f"Prometheus at {self.url}: timed out after {timeout_s:.0f}s waiting for {what}")


class LocalPrometheus(dg.ConfigurableResource):
    """A Prometheus server on `host:port`, configured from `config_file`, data in `state_dir`."""

    state_dir: str  # data, pid file, log
    host: str = "127.0.0.1"
    port: int = 9090
    retention: str = "7d"
    start_timeout_s: float = 30.0
    prometheus_binary: str = "prometheus"
    promtool_binary: str = "promtool"
    # A node_exporter on loopback beside it (local target): this machine is the API host, and
    # the hosts dashboard needs node metrics. Only the cpu, meminfo, filesystem, netdev and
    # loadavg collectors: what the dashboard reads.
    node_exporter: bool = True
    node_exporter_port: int = 9100
    node_exporter_binary: str = "prometheus-node-exporter"
    # A Pushgateway on loopback beside it: the pipeline's metrics (see the module docstring).
    pushgateway: bool = True
    pushgateway_port: int = 9091
    pushgateway_binary: str = "prometheus-pushgateway"
    # An Alertmanager on loopback beside it: delivers the alerts (see the module docstring).
    alertmanager: bool = True
    alertmanager_port: int = 9093
    alertmanager_binary: str = "prometheus-alertmanager"

    # -- paths and addresses -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _state(self) -> Path:
        return Path(self.state_dir)

    @property
    def data_dir(self) -> Path:
        return self._state / "data"

    @property
    def pid_file(self) -> Path:
        return self._state / "prometheus.pid"

    @property
    def log_file(self) -> Path:
        return self._state / "prometheus.log"

    @property
    def node_exporter_target(self) -> str | None:
        """host:port of the node_exporter this resource runs, if it runs one."""
        return f"{self.host}:{self.node_exporter_port}" if self.node_exporter else None

    @property
    def pushgateway_target(self) -> str | None:
        """host:port of the Pushgateway this resource runs, if it runs one."""
        return f"{self.host}:{self.pushgateway_port}" if self.pushgateway else None

    @property
    def pushgateway_url(self) -> str | None:
        return f"http://{self.pushgateway_target}" if self.pushgateway else None

    @property
    def alertmanager_target(self) -> str | None:
        """host:port of the Alertmanager this resource runs, if it runs one."""
        return f"{self.host}:{self.alertmanager_port}" if self.alertmanager else None

    @property
    def alertmanager_url(self) -> str | None:
        return f"http://{self.alertmanager_target}" if self.alertmanager else None

    @property
    def alertmanager_dir(self) -> Path:
        """Alertmanager's silences and notification log, and its SMTP password file."""
        return self._state / "alertmanager"

    @property
    def http(self) -> PrometheusHttp:
        return PrometheusHttp(self.url)

    # -- promtool ----------------------------------------------------------------------------
    def promtool(self) -> Promtool:
        return Promtool(self.promtool_binary)

    def check_config(self, config_file: str | Path) -> str:
        return self.promtool().check_config(config_file)

    def check_rules(self, *rule_files: str | Path) -> str:
        return self.promtool().check_rules(*rule_files)

    def test_rules(self, *test_files: str | Path) -> str:
        return self.promtool().test_rules(*test_files)

    # -- the server --------------------------------------------------------------------------
    def pid(self) -> int | None:
        """PID of our running Prometheus, if any (the pid file's process, still ours)."""
        return _running_pid(self.pid_file, f"--storage.tsdb.path={self.data_dir}")

    def is_running(self) -> bool:
        return self.pid() is not None

    def config_file_of_running(self) -> str | None:
        pid = self.pid()
        if pid is None:
            return None
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        return next((a.split("=", 1)[1] for a in args if a.startswith("--config.file=")), None)

    def command(self, config_file: str | Path) -> list[str]:
        return [
            _binary(self.prometheus_binary),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
            # The Debian binary defaults to /usr/share/prometheus/console*: absent for a user run.
            "--web.console.templates=",
            "--web.console.libraries=",
            "--log.level=warn",
        ]

    def ensure_running(self, config_file: str | Path, log=None, alertmanager_config: str | Path | None = None) -> bool:
        """Start Prometheus with `config_file` unless it runs already (then reload it if it
        runs with this file, restart it if with another), and the Alertmanager with
        `alertmanager_config` (when given) the same way. Returns True if Prometheus was started."""
        config_file = Path(config_file).resolve()
        running_config = self.config_file_of_running()
        if alertmanager_config is not None:
            self.ensure_alertmanager(alertmanager_config, log)
        if running_config == str(config_file):
            self.ensure_node_exporter(log)
            self.ensure_pushgateway(log)
            self.reload()
            if log:
                log.info(f"Prometheus at {self.url} reloaded its configuration and rules")
            return False
        self.ensure_node_exporter(log)
        self.ensure_pushgateway(log)
        if running_config is not None:
            _terminate(self.pid(), 15.0)
        self.start(config_file)
        if log:
            log.info(f"started Prometheus at {self.url} (config {config_file}, data {self.data_dir})")
        return True

    def start(self, config_file: str | Path) -> int:
        if self.is_running():
            raise PrometheusError(f"Prometheus (pid {self.pid()}) already runs for {self.state_dir}: stop it first")
        if _port_open(self.host, self.port):
            raise PrometheusError(
                f"{self.host}:{self.port} is taken by another program; stop it or set the prometheus resource's port"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return _spawn(self.command(config_file), self.pid_file, self.log_file, self._ready, self.start_timeout_s, "Prometheus")

    # -- node_exporter -----------------------------------------------------------------------
    def node_exporter_command(self) -> list[str]:
        return [
            _binary(self.node_exporter_binary),
            f"--web.listen-address={self.node_exporter_target}",
            "--collector.disable-defaults",
            *(f"--collector.{name}" for name in ("cpu", "meminfo", "filesystem", "netdev", "loadavg")),
            "--log.level=warn",
        ]

    def node_exporter_pid(self) -> int | None:
        return _running_pid(self._state / "node-exporter.pid", f"--web.listen-address={self.node_exporter_target}")

    def ensure_node_exporter(self, log=None) -> bool:
        """Start the node_exporter unless it runs. Returns True if it was started."""
        if self.node_exporter_target is None or self.node_exporter_pid() is not None:
            return False
        return self._start_companion(
            "node_exporter", "node-exporter", self.node_exporter_port, self.node_exporter_command(),
            f"http://{self.node_exporter_target}/metrics", "node_exporter_port (or node_exporter=False)",
            f"started node_exporter on {self.node_exporter_target}", log)

    def _start_companion(self, what: str, stem: str, port: int, command: list[str], ready_url: str, setting: str,
                         started: str, log) -> bool:
        """Start a program that runs beside Prometheus (node_exporter, the Pushgateway) on `port`,
        its PID and log files named `stem` in this resource's folder; refuse a port someone else holds."""
        target = f"{self.host}:{port}"
        if _port_open(self.host, port):
            raise PrometheusError(f"{target} is taken by another program; stop it or set the prometheus resource's {setting}")
        self._state.mkdir(parents=True, exist_ok=True)
        _spawn(command, self._state / f"{stem}.pid", self._state / f"{stem}.log", lambda: _http_ok(ready_url),
               self.start_timeout_s, what)
        if log:
            log.info(started)
        return True

    # -- Pushgateway -------------------------------------------------------------------------
    @property
    def pushgateway_persistence_file(self) -> Path:
        return self._state / "pushgateway.data"

    def pushgateway_command(self) -> list[str]:
        return [
            _binary(self.pushgateway_binary),
            f"--web.listen-address={self.pushgateway_target}",
            # Debian's default is /var/lib/prometheus/: ours stays in this resource's folder.
            f"--persistence.file={self.pushgateway_persistence_file}",
            "--persistence.interval=1m",
            "--log.level=warn",
        ]

    def pushgateway_pid(self) -> int | None:
        if self.pushgateway_target is None:
            return None
        return _running_pid(self._state / "pushgateway.pid", f"--web.listen-address={self.pushgateway_target}")

    def ensure_pushgateway(self, log=None) -> bool:
        """Start the Pushgateway unless it runs. Returns True if it was started."""
        if self.pushgateway_target is None or self.pushgateway_pid() is not None:
            return False
        return self._start_companion(
            "Pushgateway", "pushgateway", self.pushgateway_port, self.pushgateway_command(),
            f"{self.pushgateway_url}/-/ready", "pushgateway_port (MLOPS_LOCAL_PORTS pushgateway=PORT)",
            f"started the Pushgateway on {self.pushgateway_target} (persistence {self.pushgateway_persistence_file})", log)

    # -- Alertmanager ------------------------------------------------------------------------
    def alertmanager_command(self, config_file: str | Path) -> list[str]:
        return [
            _binary(self.alertmanager_binary),
            f"--config.file={config_file}",
            f"--storage.path={self.alertmanager_dir}",
            f"--web.listen-address={self.alertmanager_target}",
            "--cluster.listen-address=",  # one instance: no gossip port on any interface
            "--log.level=warn",
        ]

    def alertmanager_pid(self) -> int | None:
        if self.alertmanager_target is None:
            return None
        return _running_pid(self._state / "alertmanager.pid", f"--web.listen-address={self.alertmanager_target}")

    def ensure_alertmanager(self, config_file: str | Path, log=None) -> bool:
        """Start the Alertmanager with `config_file` unless it runs with it (then it re-reads
        the file); one running with another file is restarted. Returns True if it was started."""
        if self.alertmanager_target is None:
            return False
        config_file = Path(config_file).resolve()
        pid = self.alertmanager_pid()
        if pid is not None:
            if f"--config.file={config_file}\0".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                _post_reload(f"{self.alertmanager_url}/-/reload", pid, "Alertmanager")
                return False
            _terminate(pid, 15.0)
        self.alertmanager_dir.mkdir(parents=True, exist_ok=True)
        return self._start_companion(
            "Alertmanager", "alertmanager", self.alertmanager_port, self.alertmanager_command(config_file),
            f"{self.alertmanager_url}/-/ready", "alertmanager_port (MLOPS_LOCAL_PORTS alertmanager=PORT)",
            f"started the Alertmanager on {self.alertmanager_target} (config {config_file})", log)

    def reload(self) -> None:
        """Re-read the configuration and the rule files (lifecycle API; SIGHUP if it does not answer)."""
        pid = self.pid()
        if pid is None:
            raise PrometheusError(f"no Prometheus of ours runs for {self.state_dir}; start it first")
        _post_reload(f"{self.url}/-/reload", pid, "Prometheus")

    def stop(self, timeout_s: float = 15.0) -> bool:
        """Stop our Prometheus, node_exporter, Pushgateway and Alertmanager. Returns True if
        Prometheus was running."""
        exporter = self.node_exporter_pid() if self.node_exporter_target else None
        if exporter is not None:
            _terminate(exporter, timeout_s)
        (self._state / "node-exporter.pid").unlink(missing_ok=True)
        gateway = self.pushgateway_pid()
        if gateway is not None:
            _terminate(gateway, timeout_s)  # SIGTERM: it writes its persistence file first
        (self._state / "pushgateway.pid").unlink(missing_ok=True)
        alertmanager = self.alertmanager_pid()
        if alertmanager is not None:
            _terminate(alertmanager, timeout_s)  # SIGTERM: it writes its silences first
        (self._state / "alertmanager.pid").unlink(missing_ok=True)
        pid = self.pid()
        if pid is not None:
            _terminate(pid, timeout_s)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None

    # -- the HTTP API (PrometheusHttp) ----------------------------------------------------------
    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.http.query(expr)

    def series(self, selector: str, lookback_s: float = 600) -> list[dict[str, str]]:
        return self.http.series(selector, lookback_s)

    def targets_up(self, job: str | None = None) -> dict[str, bool]:
        return self.http.targets_up(job)

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.http.rule_groups()

    def wait_until(self, predicate, timeout_s: float, what: str, interval_s: float = 0.5):
        return self.http.wait_until(predicate, timeout_s, what, interval_s)

    def _ready(self) -> bool:
        return _http_ok(f"{self.url}/-/ready")

def _post_reload(url: str, pid: int, what: str) -> None:
    """Have a server re-read its configuration: POST /-/reload, SIGHUP if it does not answer."""
    import requests

    try:
        response = requests.post(url, timeout=30)
    except requests.ConnectionError:
        os.kill(pid, signal.SIGHUP)
        return
    if response.status_code != 200:
        raise PrometheusError(f"{what} refused to reload: {response.status_code} {response.text.strip()}")


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _http_ok(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid file's process if it is still the one we started: the same start time (written
    beside the PID), run by this user, with `marker` in its command line. A PID reused by
    another program after a crash is never ours (and never signalled)."""
    try:
        pid_text, _, started = pid_file.read_text().strip().partition(" ")
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        owner = Path(f"/proc/{pid}").stat().st_uid
    except (OSError, ValueError):
        return None
    if owner != os.geteuid() or marker not in cmdline:
        return None
    if started and _start_time(pid) != started:
        return None
    return pid


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _spawn(command: list[str], pid_file: Path, log_file: Path, ready, timeout_s: float, what: str) -> int:
    """Start a daemon that outlives this process (`make run` leaves it up); wait until ready."""
    with open(log_file, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(f"{process.pid} {_start_time(process.pid) or ''}".strip())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pid_file.unlink(missing_ok=True)
            raise PrometheusError(
                f"{what} exited with {process.returncode} at start: {_tail(log_file)}\n"
                f"(log {log_file}; a port may be taken or the configuration invalid)"
            )
        if ready():
            return process.pid
        time.sleep(0.1)
    _terminate(process.pid, 5)
    pid_file.unlink(missing_ok=True)
    raise PrometheusError(f"{what} did not become ready within {timeout_s:.0f}s: {_tail(log_file)}")


def _terminate(pid: int | None, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout_s`."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        _reap(pid)


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's exit status may never be collected here)."""
    _reap(pid)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(log_file: Path) -> str:
    try:
        return log_file.read_text(errors="replace").strip()[-1500:]
    except OSError:
        return "(no log)"


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (started in this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
