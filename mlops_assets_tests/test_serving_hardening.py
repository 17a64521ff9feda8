"""The API's hardening (docs/security.md): private folders for Ray and HAProxy (a foreign folder
or a planted symlink is refused, nothing is written through it, other users cannot reach Ray's
sockets), the public port's timeouts, API keys, the container's metrics forwarder."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mlops_assets.serving import runtime as runtime_lib
from mlops_assets.serving.runtime import RayServeRuntime, UnsafeFolder

NOBODY = 65534


@pytest.fixture
def short_base():
    """A short folder in /tmp (socket paths must fit), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="mh-", dir="/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- private folders ---------------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.root
def test_a_folder_created_by_another_user_is_refused(short_base, monkeypatch):
    # The state folder itself, pre-created by someone else.
    state = short_base / "s"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(UnsafeFolder, match=f"{state} belongs to uid {NOBODY}, not to this user"):
        RayServeRuntime(state_dir=state).environment()
    assert _tree(state) == []  # nothing written into it

    # The per-user folder in /tmp (a state folder too deep for sockets), pre-created by someone else.
    monkeypatch.setattr(runtime_lib, "SHORT_ROOT", short_base)
    deep = short_base / ("d" * 80)
    runtime = RayServeRuntime(state_dir=deep)
    runtime.short_dir.mkdir(mode=0o777)
    os.chown(runtime.short_dir, NOBODY, NOBODY)
    with pytest.raises(UnsafeFolder, match=f"{runtime.short_dir} belongs to uid {NOBODY}"):
        runtime.environment()
    assert _tree(runtime.short_dir) == []


@pytest.mark.unit
def test_a_planted_symlink_is_refused_and_nothing_is_written_through_it(short_base, monkeypatch):
    outside = short_base / "outside"
    outside.mkdir()
    state = short_base / "s"
    state.mkdir()
    # HAProxy's folder as a symlink to somewhere else.
    (state / "hap").symlink_to(outside)
    runtime = RayServeRuntime(state_dir=state)
    assert runtime.haproxy_dir == state / "hap"
    with pytest.raises(UnsafeFolder, match=f"{state / 'hap'} is a symbolic link"):
        runtime.environment()
    assert _tree(outside) == []

    # The per-user folder in /tmp as a symlink.
    monkeypatch.setattr(runtime_lib, "SHORT_ROOT", short_base)
    deep = RayServeRuntime(state_dir=short_base / ("d" * 80))
    deep.short_dir.symlink_to(outside)
    with pytest.raises(UnsafeFolder, match="is a symbolic link"):
        deep.environment()
    assert _tree(outside) == []

    # The shim's own name as a symlink in a folder of ours: replaced, never written through.
    (state / "hap").unlink()
    runtime.prepare_dirs()
    target = outside / "victim"
    target.write_text("untouched")
    (state / "hap" / "haproxy-loopback").symlink_to(target)
    shim = runtime.write_haproxy_shim()
    assert target.read_text() == "untouched"
    info = os.lstat(shim)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    assert "timeout http-request" in shim.read_text()


@pytest.mark.unit
def test_the_folders_are_private(short_base):
    state = short_base / "s"
    state.mkdir(mode=0o755)
    runtime = RayServeRuntime(state_dir=state)
    runtime.environment()
    for folder in (state, runtime.haproxy_dir):
        info = os.lstat(folder)
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, os.geteuid()), folder
    assert runtime.ray_dir.parent == state  # Ray's 0777 folders sit under the 0700 one


@pytest.mark.unit
def test_mlops_home_is_created_private(tmp_path, monkeypatch):
    from mlops_assets import cli
    from mlops_assets.settings import load_settings

    home = tmp_path / "home"
    cli._prepare_home(load_settings({"MLOPS_HOME": str(home)}))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


@pytest.mark.service
@pytest.mark.root
def test_no_other_user_reaches_rays_sockets_or_haproxys(serving_api):
    runtime = serving_api.resource.runtime()
    sockets = [p for p in runtime.ray_dir.glob("session_latest/sockets/*") if p.is_socket()]
    sockets += [p for p in runtime.haproxy_dir.glob("*/*.sock") if p.is_socket()]
    assert any("raylet" in p.name for p in sockets) and any(p.name == "admin.sock" for p in sockets), sockets
    # Some folder above each socket is ours and closed to everyone else.
    for path in sockets:
        closed = [parent for parent in path.parents
                  if parent.stat().st_uid == os.geteuid() and not stat.S_IMODE(parent.stat().st_mode) & 0o077]
        assert closed, f"no private folder above {path}"
    # And another user, trying for real, is refused.
    probe = (
        "import socket, sys\n"
        "for path in sys.argv[1:]:\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(path); print('reached', path)\n"
        "    except PermissionError:\n"
        "        pass\n"
    )
    # The probe can reach an open socket (so a refusal below is the folders' doing).
    control_dir = Path(tempfile.mkdtemp(prefix="mh-", dir="/tmp"))
    try:
        control_dir.chmod(0o755)
        control = socket.socket(socket.AF_UNIX)
        control.bind(str(control_dir / "open.sock"))
        control.listen(1)
        (control_dir / "open.sock").chmod(0o777)
        # The venv's interpreter may sit under a folder closed to nobody (/root/.pyenv).
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        result = subprocess.run([python, "-c", probe, str(control_dir / "open.sock"), *map(str, sockets)],
                                user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=30)
        control.close()
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"reached {control_dir / 'open.sock'}"]


# -- timeouts ----------------------------------------------------------------------------------
@pytest.mark.service
def test_idle_connections_are_closed_and_predict_is_answered(serving_api, test_split):
    from mlops_assets_tests.serving_fixtures import HTTP_REQUEST_TIMEOUT_S, as_instances

    host, port = serving_api.url.removeprefix("http://").split(":")
    idle = []
    for _ in range(300):  # half-open: connected, nothing sent
        idle.append(socket.create_connection((host, int(port)), timeout=5))
    try:
        started = time.monotonic()
        response = serving_api.predict(as_instances(test_split[0].head(2)), timeout=10)
        assert response.status_code == 200 and time.monotonic() - started < 5
        # HAProxy's http-request timeout ends each idle connection with 408, all of them by
        # then (HAProxy's client timeout, 30 s, would end them much later).
        time.sleep(HTTP_REQUEST_TIMEOUT_S + 1)
        poller = select.poll()
        for sock in idle:
            poller.register(sock, select.POLLIN)
        by_fd = {sock.fileno(): sock for sock in idle}
        answers = [by_fd[fd].recv(4096) for fd, _ in poller.poll(0)]
        assert len(answers) == len(idle)
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {a[:40] for a in answers}
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.service
def test_a_request_slower_than_the_timeout_gets_408_not_a_hang(serving_api):
    from mlops_assets_tests.serving_fixtures import HTTP_REQUEST_TIMEOUT_S

    host, port = serving_api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=HTTP_REQUEST_TIMEOUT_S + 10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        try:  # one header a second, never finishing the head
            for index in range(4 * HTTP_REQUEST_TIMEOUT_S):
                time.sleep(1)
                sock.sendall(f"X-Slow-{index}: 1\r\n".encode())
        except OSError:
            pass  # closed by HAProxy
        try:
            answer = sock.recv(4096)
        except OSError:
            pass
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert elapsed < HTTP_REQUEST_TIMEOUT_S + 3


# -- API keys ----------------------------------------------------------------------------------
def _asgi_call(app, path: str, headers: dict[str, str] | None = None, body: bytes = b"{}"):
    """One HTTP request through an ASGI app in this process: (status, headers, body)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST" if path == "/predict" else "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {"content-length": str(len(body)), **(headers or {})}.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.unit
def test_predict_needs_a_valid_key_and_health_stays_open(tmp_path):
    from fastapi import FastAPI

    from mlops_assets.serving.app import ApiMiddleware
    from mlops_assets.serving.auth import ApiKeys

    keys = tmp_path / "keys"
    keys.write_text("# operators\nfirst-key\nsecond-key, third-key\n")
    inner = FastAPI()

    @inner.post("/predict")
    async def predict():
        return {"predictions": []}

    @inner.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    recorded = []
    app = ApiMiddleware(inner, max_body_bytes=1024, record=lambda route, status, _s: recorded.append((route, status)),
                        api_keys=ApiKeys(str(keys)))
    status, headers, body = _asgi_call(app, "/predict")
    assert status == 401 and b"Authorization: Bearer <key>" in body
    assert headers[b"www-authenticate"] == b'Bearer realm="mlops-api"'
    status, _, body = _asgi_call(app, "/predict", {"Authorization": "Bearer wrong-key"})
    assert (status, b"not valid" in body) == (401, True)
    assert b"wrong-key" not in body
    for key in ("first-key", "third-key"):
        assert _asgi_call(app, "/predict", {"Authorization": f"Bearer {key}"})[0] == 200
    assert _asgi_call(app, "/readyz")[0] == 200  # health checks need no key
    assert recorded[0] == ("/predict", 401)  # the status only, never the key
    # A rotated file is read again; an unreadable one refuses (503), it never opens the API.
    keys.write_text("rotated-key-longer\n")
    time.sleep(1.1)
    assert _asgi_call(app, "/predict", {"Authorization": "Bearer first-key"})[0] == 401
    assert _asgi_call(app, "/predict", {"Authorization": "Bearer rotated-key-longer"})[0] == 200
    keys.unlink()
    time.sleep(1.1)
    assert _asgi_call(app, "/predict", {"Authorization": "Bearer rotated-key-longer"})[0] == 503


@pytest.mark.unit
def test_the_client_sends_the_key_and_never_shows_it():
    import http.server
    import json

    from mlops_assets.serving.client import ApiClient

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers["Content-Length"]))
            payload = json.dumps({"predictions": ["a"], "model": {"version": "1"}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ApiClient(f"http://127.0.0.1:{server.server_address[1]}", api_key="s3cret")
        client.smoke_check([{"x": 1}], "1")
        assert seen == ["Bearer s3cret"]
        assert "s3cret" not in repr(client)
    finally:
        server.shutdown()


# -- the container's metrics forwarder ---------------------------------------------------------
class _Echo:
    """A real TCP echo server on loopback: the forwarder's upstream."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass


def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


@pytest.mark.unit
def test_forwarder_is_bounded_times_out_idle_pairs_and_survives_accept_errors():
    from mlops_assets.serving.container import Forwarder

    echo = _Echo()
    forwarder = Forwarder("127.0.0.1", 0, echo.port, max_connections=8, idle_s=1.0, slot_wait_s=10)
    port = forwarder.server.getsockname()[1]
    forwarder.start()
    assert _roundtrip(port) == b"ping"

    # A burst of idle connections: never more than 8 pairs at once, each dropped when idle.
    burst = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    time.sleep(0.5)
    assert forwarder.active <= 8
    deadline = time.monotonic() + 20
    while forwarder.active and time.monotonic() < deadline:
        time.sleep(0.2)
    assert forwarder.peak == 8 and forwarder.active == 0  # the waiting ones got their slots, and timed out too
    for sock in burst:
        sock.close()
    assert _roundtrip(port, b"after the burst") == b"after the burst"

    # A failing accept (as with EMFILE): logged, and the next connection is served.
    real = forwarder.server

    class FailingOnce:
        failed = False

        def accept(self):
            if not FailingOnce.failed:
                FailingOnce.failed = True
                raise OSError(24, "Too many open files")
            return real.accept()

    forwarder.server = FailingOnce()
    _roundtrip(port)  # served by the accept already waiting on the real socket
    assert _roundtrip(port, b"still accepting") == b"still accepting"
    assert forwarder.accept_errors == 1 and forwarder.thread.is_alive()


# -- low ones ----------------------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("name", ["../../etc", ".hidden", "x" * 129, "name with space", "a..b"])
def test_a_model_name_that_would_make_a_path_is_refused(name, tmp_path):
    from mlops_assets.resources.ray_serve import RayServe, RayServeError
    from mlops_assets.serving.model import ModelSource
    from mlops_assets.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="MLOPS_MODEL_NAME=.* is not a usable model name"):
        load_settings({"MLOPS_MODEL_NAME": name})
    with pytest.raises(RayServeError, match="is not a usable folder name"):
        RayServe(state_dir=str(tmp_path))._download(ModelSource(f"models:/{name}/1"), "1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_readyz_gives_a_short_reason_not_the_exception_text():
    from mlops_assets.serving.app import _short_reason
    from mlops_assets.serving.model import ModelSourceError

    ours = ModelSourceError("the model in /m has no signature; log it with `signature=`\nmore detail")
    assert _short_reason(ours) == "ModelSourceError: the model in /m has no signature; log it with `signature=`"
    theirs = KeyError("/home/secret/path/in/a/traceback")
    assert "secret" not in _short_reason(theirs) and _short_reason(theirs).startswith("KeyError")


def exec_done(pid: int, marker: str, timeout_s: float = 10) -> None:
    """Until a child has exec'd, /proc/PID/cmdline is still its parent's (pytest's): wait for
    `marker` there (on a busy machine the check otherwise races the exec)."""
    deadline = time.monotonic() + timeout_s
    while marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
        assert time.monotonic() < deadline, f"process {pid} never showed {marker!r} in its command line"
        time.sleep(0.01)


@pytest.mark.unit
def test_a_pid_file_naming_another_process_is_not_ours(tmp_path):
    from mlops_assets.resources.prometheus import _running_pid, _start_time

    marker = f"--web.listen-address=127.0.0.1:1 {tmp_path}"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        exec_done(sleeper.pid, marker)
        pid_file = tmp_path / "x.pid"
        pid_file.write_text(f"{sleeper.pid} {_start_time(sleeper.pid)}")
        assert _running_pid(pid_file, marker) == sleeper.pid
        # The same PID with another start time (a PID reused after a crash): not ours.
        pid_file.write_text(f"{sleeper.pid} {int(_start_time(sleeper.pid)) - 1}")
        assert _running_pid(pid_file, marker) is None
        # A process of another user with the same command line: not ours either.
        other = subprocess.Popen(["sleep", "60"], user=NOBODY) if os.geteuid() == 0 else None
        if other is not None:
            try:
                exec_done(other.pid, "sleep")
                pid_file.write_text(f"{other.pid} {_start_time(other.pid)}")
                assert _running_pid(pid_file, "sleep") is None
            finally:
                other.kill()
                other.wait()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.unit
def test_key_and_timeout_settings(tmp_path):
    from mlops_assets.settings import SettingsError, load_settings
    from mlops_assets.targets import resources_for

    settings = load_settings({"MLOPS_HOME": str(tmp_path), "MLOPS_API_KEYS": "k-one, k-two",
                              "MLOPS_API_TIMEOUTS": "http_request=4,request=12"})
    assert settings.api_keys == ("k-one", "k-two") and "k-one" not in repr(settings)
    ray_serve = resources_for(settings)["api_deployer"].ray_serve
    assert (ray_serve.timeout_http_request_s, ray_serve.request_timeout_s, ray_serve.timeout_client_s) == (4, 12, 30)
    assert ray_serve.runtime().http_options()["request_timeout_s"] == 12
    with pytest.raises(SettingsError, match="MLOPS_API_TIMEOUTS names 'idle'; use any of client, server"):
        load_settings({"MLOPS_API_TIMEOUTS": "idle=3"})
    with pytest.raises(SettingsError, match="'request=0' is not request=SECONDS"):
        load_settings({"MLOPS_API_TIMEOUTS": "request=0"})
    with pytest.raises(SettingsError, match="MLOPS_API_KEYS works for the local target only.*MLOPS_API_KEY_FILE"):
        load_settings({"MLOPS_TARGET": "sim", "MLOPS_API_KEYS": "k"})
    with pytest.raises(SettingsError, match="MLOPS_API_KEY_FILE=.* is not a file"):
        load_settings({"MLOPS_API_KEY_FILE": str(tmp_path / "absent")})
    keys = tmp_path / "keys"
    keys.write_text("file-key\n")
    sim = resources_for(load_settings({"MLOPS_HOME": str(tmp_path), "MLOPS_TARGET": "sim", "MLOPS_API_KEY_FILE": str(keys)}))
    assert sim["api_deployer"].api_key_file == str(keys)
    assert sim["api_deployer"].ansible.extra_vars["api_key_file"] == str(keys)  # the api role mounts it


@pytest.mark.unit
def test_a_timeout_change_restarts_ray_on_the_next_deploy(short_base):
    """Ray's processes read HAProxy's timeouts at start: a running instance started with others
    is restarted (ensure_started compares this fingerprint with the one recorded at start)."""
    from mlops_assets.resources.ray_serve import _start_fingerprint

    runtime = RayServeRuntime(state_dir=short_base / "s")
    assert _start_fingerprint(runtime) == _start_fingerprint(RayServeRuntime(state_dir=short_base / "s"))
    assert _start_fingerprint(runtime) != _start_fingerprint(
        RayServeRuntime(state_dir=short_base / "s", timeout_http_request_s=4))
    assert _start_fingerprint(runtime) != _start_fingerprint(RayServeRuntime(state_dir=short_base / "s", timeout_client_s=9))
