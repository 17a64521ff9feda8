"""The records under MLOPS_HOME (mlops_assets/state.py): atomic, locked, versioned, listed once;
and the run lock that keeps two `make run` on one MLOPS_HOME apart."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlops_assets.state import RECORDS, SCHEMA_VERSION, RunBusy, RunLock, StateError, StateFile, atomic_write_text

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_a_record_round_trips_with_its_schema_version(tmp_path):
    record = StateFile(tmp_path / "r.json")
    assert record.read() is None
    record.write({"version": "3"})
    assert record.read() == {"version": "3"}
    assert json.loads(record.path.read_text())["schema_version"] == SCHEMA_VERSION


def test_a_record_written_before_schema_versions_reads_as_is(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"version": "2"}))
    assert StateFile(tmp_path / "r.json").read() == {"version": "2"}


def test_a_record_from_a_newer_release_is_refused(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"version": "2", "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(StateError, match="upgrade mlops-assets, or remove the file"):
        StateFile(tmp_path / "r.json").read()


def test_a_write_killed_midway_leaves_the_previous_record(tmp_path, monkeypatch):
    record = StateFile(tmp_path / "r.json")
    record.write({"version": "1"})

    def crash(*args):
        raise KeyboardInterrupt("killed during the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        record.write({"version": "2"})
    monkeypatch.undo()
    assert record.read() == {"version": "1"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def _increment(path: str, times: int) -> None:
    record = StateFile(path)
    for _ in range(times):
        record.update(lambda value: {"count": value.get("count", 0) + 1})


def test_concurrent_updates_from_several_processes_are_never_lost(tmp_path):
    path = str(tmp_path / "counter.json")
    workers = [multiprocessing.get_context("fork").Process(target=_increment, args=(path, 50)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert StateFile(path).read() == {"count": 200}


def test_every_record_is_listed_with_its_meaning_and_writer():
    assert RECORDS, "no records"
    for name, record in RECORDS.items():
        assert record.path.endswith(".json") and record.meaning and record.written_by, name
    paths = [record.path for record in RECORDS.values()]
    assert len(paths) == len(set(paths))


def test_atomic_text_files_get_the_mode_asked_for(tmp_path):
    atomic_write_text(tmp_path / "secret", "s3cr3t", mode=0o600)
    assert (tmp_path / "secret").read_text() == "s3cr3t"
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


HOLD = """
import sys, time
from mlops_assets.state import RunLock
with RunLock(sys.argv[1], timeout_s=0):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(home: Path, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(home), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout.readline().strip() == "holding"
    return process


def test_a_second_run_names_the_holder_and_gives_up_after_its_timeout(tmp_path):
    holder = _holder(tmp_path, 30)
    try:
        said: list[str] = []
        started = time.monotonic()
        with pytest.raises(RunBusy) as busy:
            with RunLock(tmp_path, timeout_s=1.0, echo=said.append):
                pass
        assert 1.0 <= time.monotonic() - started < 10
        assert f"pid {holder.pid}" in str(busy.value) and "gave up waiting" in str(busy.value)
        assert said and f"pid {holder.pid}" in said[0]
    finally:
        holder.kill()
        holder.wait()


def test_a_run_arriving_before_the_holder_wrote_its_pid_still_names_it(tmp_path):
    """The holder takes the lock, then writes its line: a second run in between waits a moment
    for that line instead of calling the holder unknown."""
    import fcntl
    import threading

    lock_file = tmp_path / RunLock.FILENAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, nothing written yet
    writer = threading.Timer(0.4, lambda: os.pwrite(fd, b"pid 4242: cli run, since 12:00:00\n", 0))
    writer.start()
    said: list[str] = []
    try:
        with pytest.raises(RunBusy):
            with RunLock(tmp_path, timeout_s=1.5, echo=said.append, poll_s=0.05):
                pass
    finally:
        writer.join()
        os.close(fd)
    assert said and "(pid 4242: cli run" in said[0], said


def test_a_second_run_waits_for_the_first_and_then_goes_on(tmp_path):
    holder = _holder(tmp_path, 1.5)
    said: list[str] = []
    started = time.monotonic()
    with RunLock(tmp_path, timeout_s=30, echo=said.append, poll_s=0.1):
        assert time.monotonic() - started >= 1.0, "the lock was taken while the first run still held it"
    holder.wait(timeout=10)
    assert any(f"pid {holder.pid}" in line for line in said)
    assert said[-1].startswith("the other run has finished")


def test_a_killed_holder_releases_the_lock(tmp_path):
    holder = _holder(tmp_path, 60)
    holder.kill()
    holder.wait()
    with RunLock(tmp_path, timeout_s=0):
        pass
