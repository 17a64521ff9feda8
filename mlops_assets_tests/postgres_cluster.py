"""A throwaway PostgreSQL cluster for tests and benchmarks (test_postgres_state.py,
bench/ml_phase.py --store postgres): Debian's server binaries (scripts/setup_postgres.sh installs
them), run as the `postgres` user with trust authentication on a Unix socket in a private
folder, no TCP listener, fsync off. Needs root (to run the server as `postgres`)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AS_POSTGRES = ["runuser", "-u", "postgres", "--"]


class NoServerError(RuntimeError):
    """No PostgreSQL server binaries here, and scripts/setup_postgres.sh could not install them."""


def server_bindir() -> Path:
    found = subprocess.run([str(ROOT / "scripts" / "setup_postgres.sh"), "--print-bindir"], capture_output=True, text=True)
    if found.returncode != 0 or not found.stdout.strip():
        raise NoServerError(f"no PostgreSQL server: {found.stderr.strip()}")
    return Path(found.stdout.strip())


def _as_postgres(*command) -> None:
    done = subprocess.run([*AS_POSTGRES, *map(str, command)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}")


@dataclass
class Cluster:
    bindir: Path
    socket_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def create(self, database: str) -> str:
        """A new empty database (dropped first if it exists, its sessions ended); its URL."""
        _as_postgres(self.bindir / "dropdb", "--if-exists", "--force", "-h", self.socket_dir, "-U", "postgres", database)
        _as_postgres(self.bindir / "createdb", "-h", self.socket_dir, "-U", "postgres", database)
        return self.url(database)

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(dbname=database, user="postgres", host=str(self.socket_dir)) as connection:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()


@contextmanager
def throwaway_cluster():
    bindir = server_bindir()
    root = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    data, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir()
    for path in (root, socket_dir):
        shutil.chown(path, "postgres", "postgres")
    try:
        _as_postgres(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        # Unix socket only (no TCP listener), in a folder only root and postgres can enter.
        _as_postgres(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60", "-o",
                     f"-k {socket_dir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off", "start")
        yield Cluster(bindir, socket_dir)
    finally:
        subprocess.run([*AS_POSTGRES, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
