"""Every record the project keeps under MLOPS_HOME, in one place.

A record is a small JSON file that a later run reads as evidence ("this image already exists
for that recipe", "this Serve config last served healthy"). Each one is listed in `RECORDS`
with what it means and who writes it (docs/operations.md shows the same table); each is
written the same way:

- atomically: a new file in the same folder, flushed, then renamed over the old one, so a run
  killed mid-write leaves the previous record whole;
- under an exclusive lock (`fcntl.flock` on a `.lock` file beside it), so two processes never
  interleave a read-modify-write;
- with `schema_version`: a record written by a newer release is refused with a message instead
  of being misread; a record without one (written before versions existed) reads as version 0,
  which has the same shape as version 1.

`RunLock` is the lock of a whole `cli run` (and `cli down`): one per MLOPS_HOME.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

SCHEMA_VERSION = 1
SCHEMA_KEY = "schema_version"


class StateError(RuntimeError):
    """A record that cannot be used as it is; the message says what to do."""


@dataclass(frozen=True)
class Record:
    """One kind of record: its file (relative to MLOPS_HOME; `{target}` is the target's name),
    what it means, and the module that writes it."""

    path: str
    meaning: str
    written_by: str

    @property
    def filename(self) -> str:
        return Path(self.path).name

    def under(self, home: str | Path, target: str = "local") -> "StateFile":
        return StateFile(Path(home) / self.path.format(target=target))

    def in_folder(self, folder: str | Path) -> "StateFile":
        """The record in the folder a resource owns (e.g. the serving state folder)."""
        return StateFile(Path(folder) / self.filename)


RECORDS: dict[str, Record] = {
    "deployed": Record(
        "serving/deployed.json",
        "the last Serve config of the local API that passed its health check, its model version and the "
        "request that produced it: what a rollback re-applies, and why a no-change run touches nothing",
        "rollout.py (only after the smoke prediction passed)",
    ),
    "api_deployed": Record(
        "ansible/{target}/api-deployed.json",
        "the image, address and model version last deployed to the API hosts that passed its smoke test",
        "resources/api_deployer.py (ImageOnApiHosts, only after the smoke prediction passed)",
    ),
    "image_recipes": Record(
        "images/recipes.json",
        "recipe (registry version, serving code, Dockerfile, pinned requirements, base image) -> image tag: "
        "finds the champion's image without downloading the model (newest 50)",
        "image/build.py (after a build or a find)",
    ),
    "pushgateway": Record(
        "ansible/{target}/pushgateway.json",
        "the monitoring host's Pushgateway that deployed_hosts put in service (sim, aws): where the pipeline's "
        "metrics are pushed when MLOPS_PUSHGATEWAY_URL is unset",
        "resources/hosts.py (AnsibleHosts, after the base plays succeeded)",
    ),
    "promtool_passed": Record(
        "monitoring/promtool-passed.json",
        "the hash of the rendered monitoring files that passed promtool's checks and rule tests, and their folder",
        "assets/monitoring.py via resources/monitoring.py",
    ),
    "tracking_server": Record(
        "ansible/{target}/tracking-server.json",
        "the MLflow tracking server the tracking_server asset deployed on the monitoring host (sim, aws): its URL, "
        "the user the pipeline logs in as and where that user's password comes from (never the password)",
        "resources/tracking.py (ServerOnMonitoringHost, after the role's health check and a reach from here)",
    ),
    "rehearsal_hosts": Record(
        "rehearsal/hosts.json",
        "the rehearsal's namespace hosts (sim): name, address, root folder; `make down` removes them",
        "rehearsal/sim_hosts.py",
    ),
    "emulator": Record(
        "rehearsal/emulator/emulator.json",
        "the EC2 emulator of the rehearsal (sim): pid, endpoint, region",
        "rehearsal/emulator.py",
    ),
}


class StateFile:
    """One JSON record: read, written atomically and locked (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StateFile({str(self.path)!r})"

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on this record for a read-modify-write (blocks until free)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> dict[str, Any] | None:
        """The record without its schema key; None when there is none or it is unreadable
        (a torn file cannot exist: writes are atomic, but a hand edit can break it)."""
        try:
            value = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(value, dict):
            return None
        version = value.pop(SCHEMA_KEY, 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} has schema_version {version!r}, newer than this release reads ({SCHEMA_VERSION}); "
                "upgrade mlops-assets, or remove the file to start that record afresh"
            )
        return value

    def write(self, value: dict[str, Any]) -> None:
        with self.locked():
            self._write_unlocked(value)

    def update(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Read, change, write, all under the lock; returns what was written."""
        with self.locked():
            new = change(self.read() or {})
            self._write_unlocked(new)
            return new

    def remove(self) -> None:
        with self.locked():
            self.path.unlink(missing_ok=True)

    def _write_unlocked(self, value: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({**value, SCHEMA_KEY: SCHEMA_VERSION}, indent=1, sort_keys=True)
        fd, partial = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self.path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write a plain file (not a record) atomically: rendered configs, generated secrets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def generated_secret(directory: Path, name: str, nbytes: int = 18) -> str:
    """The secret `name` generated once into `directory` (0700) as a 0600 file and read back:
    for passwords the project creates itself (the rehearsal's, a deployed tracking server's)."""
    import secrets

    path = Path(directory) / name
    if not path.is_file():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_text(path, secrets.token_urlsafe(nbytes), mode=0o600)  # never readable by others, not even briefly
    return path.read_text().strip()


class RunBusy(RuntimeError):
    """Another run holds the MLOPS_HOME lock and did not let go in time."""


class RunLock:
    """One `cli run` (or `cli down`) per MLOPS_HOME at a time.

    The lock is `fcntl.flock` on MLOPS_HOME/.run.lock: the kernel releases it when the holder
    exits, even on SIGKILL, so a crashed run never leaves a stale lock behind. The holder writes
    its PID and command into the file; a second run prints them and waits until the first has
    finished (then goes on), or for `timeout_s` at most (then RunBusy: the CLI exits with 75)."""

    FILENAME = ".run.lock"

    def __init__(self, home: str | Path, *, timeout_s: float = 1800.0, echo: Callable[[str], None] = print,
                 what: str = "run", poll_s: float = 0.5) -> None:
        self.path = Path(home) / self.FILENAME
        self.timeout_s = timeout_s
        self.echo = echo
        self.what = what
        self.poll_s = poll_s
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def _named_holder(self, settle_s: float = 2.0) -> str:
        """The holder's line; the holder writes it just after taking the lock, so an empty file
        is read again for a moment before the holder is called unknown."""
        holder, settle = self.holder(), time.monotonic() + settle_s
        while holder == "unknown" and time.monotonic() < settle:
            time.sleep(0.05)
            holder = self.holder()
        return holder

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout_s
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            message = (f"another mlops-assets run holds {self.path.parent} ({self._named_holder()}); "
                       f"this {self.what} waits for it (at most {self.timeout_s:.0f}s)")
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunBusy(message.replace(f"this {self.what} waits for it", f"this {self.what} gave up waiting")
                              + "; try again when it has finished")
            if not announced:
                self.echo(message)
                announced = True
            time.sleep(self.poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(_command_line())}, since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        if announced:
            self.echo(f"the other run has finished: this {self.what} goes on")
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _command_line() -> list[str]:
    try:
        return Path("/proc/self/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1][-4:]
    except OSError:
        return ["?"]
