#!/usr/bin/env python3
"""The stack tier of `make test` in two concurrent lanes:

- `rehearsal`: test_rehearsal_e2e.py (the `sim` target end to end, about 12 minutes);
- `others`: every other stack test (the roles, the image, the harness, the local lazy-rebuild
  scenarios; about 14 minutes).

Run one after the other they took 26 minutes on 2 cores; most of each lane is waiting (SSH,
Ansible, Ray starting in a container, image builds), so side by side they finish in about the
time of the longer one plus the contention.

They can share the machine because nothing of one is visible to the other: the rehearsal's hosts
are on the emulator's 172.31.x subnet and the harness's on 10.213.x; each stack removes only the
images its own `container_image` recorded (lazy_stack.images_built_in); the offline base and the
hosts' layer are built once under a file lock (offline_base.py); the local stack takes free
loopback ports. Podman's service is started here first, so the lanes do not race to start it.

Each lane writes its output to a log file; a progress line every minute names the test each lane
runs, and both logs are printed whole at the end. Arguments are passed to both pytest runs; a
`--junitxml=PATH` becomes PATH.LANE.xml for each. With MLOPS_TEST_PROGRESS_FILE set, each lane
names its running test in that file's name plus `.LANE` (.ci/run prints them when it stops a hung
run). Exit status: 0 when both lanes passed (or had nothing to run), 1 otherwise.

    .venv/bin/python scripts/stack_lanes.py [pytest arguments]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = "mlops_assets_tests"
REHEARSAL = f"{TESTS}/test_rehearsal_e2e.py"
LANES = {"rehearsal": [REHEARSAL], "others": [TESTS, f"--ignore={REHEARSAL}"]}
NO_TESTS_COLLECTED = 5


def lane_args(args: list[str], lane: str) -> list[str]:
    """The pytest arguments for one lane: a JUnit report path gets the lane's name."""
    out = []
    for arg in args:
        if arg.startswith("--junitxml=") or arg.startswith("--junit-xml="):
            option, _, path = arg.partition("=")
            arg = f"{option}={path.removesuffix('.xml')}.{lane}.xml"
        out.append(arg)
    return out


def start_engine() -> None:
    """Podman's Docker-compatible service (or the Docker engine) answering before the lanes start."""
    subprocess.run([sys.executable, "-c", "from mlops_assets.rehearsal.engine import docker_host; docker_host()"],
                   cwd=ROOT, check=False, timeout=1000)


def running_test(progress: str | None, lane: str) -> str:
    if not progress:
        return "?"
    try:
        return Path(f"{progress}.{lane}").read_text().strip() or "?"
    except OSError:
        return "starting"


def main(args: list[str]) -> int:
    start_engine()
    progress = os.environ.get("MLOPS_TEST_PROGRESS_FILE")
    logs_dir = Path(tempfile.mkdtemp(prefix="mlops-stack-lanes-"))
    lanes: dict[str, tuple[subprocess.Popen, Path]] = {}
    started = time.monotonic()

    def stop(signum, _frame):
        for process, _ in lanes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        report()
        sys.exit(128 + signum)

    def report() -> None:
        for name, (process, log) in lanes.items():
            print(f"\n===== stack lane '{name}' (exit {process.poll()}): {log} =====", flush=True)
            print(log.read_text(errors="replace"), flush=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for name, paths in LANES.items():
        env = dict(os.environ)
        if progress:
            env["MLOPS_TEST_PROGRESS_FILE"] = f"{progress}.{name}"
        log = logs_dir / f"{name}.log"
        command = [sys.executable, "-m", "pytest", *paths, "-m", "stack", *lane_args(args, name)]
        print(f"stack lane '{name}': {' '.join(command[1:])} > {log}", flush=True)
        with log.open("w") as out:
            lanes[name] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT), log)
    last_line = 0.0
    while any(process.poll() is None for process, _ in lanes.values()):
        time.sleep(2)
        if time.monotonic() - last_line >= 60:
            last_line = time.monotonic()
            states = [f"{name}: " + (running_test(progress, name) if process.poll() is None else f"done ({process.returncode})")
                      for name, (process, _) in lanes.items()]
            print(f"[stack lanes {time.monotonic() - started:5.0f}s] " + " | ".join(states), flush=True)
    report()
    codes = {name: process.returncode for name, (process, _) in lanes.items()}
    print(f"stack lanes finished in {time.monotonic() - started:.0f}s: {codes}", flush=True)
    return 0 if all(code in (0, NO_TESTS_COLLECTED) for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
