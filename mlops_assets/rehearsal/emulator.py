"""The EC2 API emulator of the offline rehearsal: a moto server on 127.0.0.1.

`Ec2Emulator.start(state_dir)` runs moto's server (emulator_server.py: GetConsoleOutput shows
the rehearsal hosts' consoles) on a free loopback port (or reuses the one
recorded in `state_dir/emulator.json` if it still answers), loaded with one Debian 12 AMI
under Debian's publisher account so that infra_tf/'s `aws_ami` lookup finds it. The
environment that OpenTofu and boto3 need to talk to it is `Ec2Emulator.env`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from mlops_assets.state import RECORDS
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_AMI_OWNER = "136693071363"
DEBIAN_AMI_NAME = "debian-12-amd64-20250101-1000"
DEBIAN_AMI_ID = "ami-0deb12b00c0ffee01"
REGION = "eu-west-1"
# moto accepts any credentials; these make it obvious in logs that nothing real is used.
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal"}


def _write_amis(state_dir: Path) -> Path:
    """The emulator's only image: a Debian 12 AMI owned by Debian's publisher account, as in
    a real region (moto loads it into every account and region at start)."""
    path = state_dir / "amis.json"
    path.write_text(
        json.dumps(
            [
                {
                    "ami_id": DEBIAN_AMI_ID,
                    "name": DEBIAN_AMI_NAME,
                    "description": "Debian 12 (bookworm) amd64, as registered in the EC2 emulator",
                    "owner_id": DEBIAN_AMI_OWNER,
                    "public": True,
                    "state": "available",
                    "architecture": "x86_64",
                    "virtualization_type": "hvm",
                    "root_device_type": "ebs",
                    "root_device_name": "/dev/xvda",
                    "image_type": "machine",
                    "hypervisor": "xen",
                    "creation_date": "2025-01-01T10:00:00.000Z",
                }
            ]
        )
    )
    return path


def _package_env(**extra: str) -> dict[str, str]:
    """The environment of a process that runs this package (`python -m mlops_assets...`),
    also when it runs from a source tree."""
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **extra, "PYTHONPATH": path}


def _terminate(pid: int) -> None:
    """SIGTERM to the process group of `pid`, SIGKILL after 5 s; reaped when it is our child."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:  # our own child: reap it
                return
        except ChildProcessError:  # started by another process: poll for its exit
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _answers(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Ec2Emulator:
    endpoint: str
    pid: int
    region: str = REGION
    # address -> pid of the forwarder that exposes the emulator there (expose())
    forwarders: dict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def expose(self, state_dir: Path, address: str, timeout: float = 10.0) -> str:
        """The emulator's endpoint on `address` (the test bridge's, never 0.0.0.0), through a
        forwarder process recorded beside the emulator: what namespace hosts use to reach S3.
        Idempotent while the recorded forwarder answers."""
        if address in ("0.0.0.0", "::", ""):
            raise ValueError("the emulator is exposed on one address of the test bridge, never on every interface")
        endpoint = f"http://{address}:{self.port}"
        record = RECORDS["emulator"].in_folder(state_dir)
        known = record.read() or {}
        if (known.get("forwarders") or {}).get(address) and _answers(address, self.port):
            return endpoint  # one run holds MLOPS_HOME's lock at a time: no race here
        log = open(Path(state_dir) / "forwarder.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_assets.rehearsal.forwarder", f"{address}:{self.port}", f"127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=_package_env(),
        )
        deadline = time.monotonic() + timeout
        while not _answers(address, self.port):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the emulator's forwarder did not listen on {address}:{self.port}; "
                                   f"see {Path(state_dir) / 'forwarder.log'}")
            time.sleep(0.1)
        record.update(lambda value: {**value, "forwarders": {**(value.get("forwarders") or {}), address: process.pid}})
        return endpoint

    @property
    def env(self) -> dict[str, str]:
        """What OpenTofu (and the provider test double under it) and boto3 need."""
        return {
            **_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_EC2": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, service: str = "ec2"):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    @staticmethod
    def console_dir(state_dir: Path) -> Path:
        """Where the instances' console output lives (emulator_server.py reads it)."""
        return Path(state_dir) / "console"

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                return True
        except Exception:
            return False

    @classmethod
    def start(cls, state_dir: Path, timeout: float = 30.0) -> "Ec2Emulator":
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        record = RECORDS["emulator"].in_folder(state_dir)
        known = record.read()
        if known:
            previous = cls(**known)
            if previous.alive():
                return previous
        port = free_port()
        log = open(state_dir / "moto_server.log", "ab")
        console = cls.console_dir(state_dir)
        console.mkdir(mode=0o700, exist_ok=True)
        # moto's server, whose GetConsoleOutput shows the rehearsal hosts' consoles.
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_assets.rehearsal.emulator_server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives the Dagster run that started it, like a cloud
            env=_package_env(**_CREDENTIALS, MOTO_AMIS_PATH=str(_write_amis(state_dir)),
                             MLOPS_EMULATOR_CONSOLE_DIR=str(console)),
        )
        emulator = cls(endpoint=f"http://127.0.0.1:{port}", pid=process.pid)
        deadline = time.monotonic() + timeout
        while not emulator.alive():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start on 127.0.0.1:{port}; see {state_dir / 'moto_server.log'}")
            time.sleep(0.2)
        record.write({"endpoint": emulator.endpoint, "pid": emulator.pid, "region": emulator.region})
        return emulator

    def stop(self) -> None:
        for pid in [*self.forwarders.values(), self.pid]:
            _terminate(pid)

    @classmethod
    def stop_recorded(cls, state_dir: Path) -> bool:
        record = RECORDS["emulator"].in_folder(state_dir)
        known = record.read()
        if not known:
            return False
        cls(**known).stop()
        record.remove()
        return True
