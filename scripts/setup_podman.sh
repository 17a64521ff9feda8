#!/usr/bin/env bash
# Give this machine a Docker-compatible engine API, for `make run` and `.ci/run`.
#
# When a Docker engine (or any engine behind DOCKER_HOST) already answers, nothing is done.
# Otherwise, on Debian as root: install Podman, configure it the way that works on machines
# without systemd and with hybrid cgroups (the project's build machines: "Containers without a Docker
# engine"), start `podman system service` on a unix socket and check it with the Python
# `docker` SDK. Idempotent: a second run only checks.
#
# Use the engine with:   export DOCKER_HOST=unix:///run/mlops-podman/podman.sock
# (`scripts/setup_podman.sh --print-docker-host` prints that value.)
#
# Exit status: 0 when an engine answers; 1 with a message saying how to get one otherwise.
set -euo pipefail

SOCKET_DIR=${MLOPS_PODMAN_SOCKET_DIR:-/run/mlops-podman}
SOCKET="$SOCKET_DIR/podman.sock"
PODMAN_DOCKER_HOST="unix://$SOCKET"
CONF_DIR=/etc/containers/containers.conf.d
CONF_FILE="$CONF_DIR/50-mlops-assets.conf"
LOG_FILE="$SOCKET_DIR/service.log"
PID_FILE="$SOCKET_DIR/service.pid"
HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON=${PYTHON:-"$HERE/../.venv/bin/python"}
[ -x "$PYTHON" ] || PYTHON=python3

if [ "${1:-}" = "--print-docker-host" ]; then
    echo "$PODMAN_DOCKER_HOST"
    exit 0
fi

say() { echo "setup_podman: $*" >&2; }

no_engine() {
    say "no Docker-compatible engine is reachable, and $1."
    say "Get one of these, then run this script again:"
    say "  - Docker Engine (https://docs.docker.com/engine/install/), or"
    say "  - Podman as root on Debian/Ubuntu: this script installs it with apt-get, or"
    say "  - any engine socket: export DOCKER_HOST=unix:///path/to/docker.sock"
    exit 1
}

# ping HOST: true when the Docker Engine API at HOST answers, checked with the Python docker
# SDK (what the container_image asset uses) when it is installed, else with curl.
ping() {
    if "$PYTHON" -c 'import docker' 2>/dev/null; then
        DOCKER_HOST="$1" "$PYTHON" - <<'PY' 2>/dev/null
import docker
client = docker.from_env(timeout=10)
assert client.ping()
PY
    else
        local sock=${1#unix://}
        [ -S "$sock" ] && curl -fsS --max-time 10 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1
    fi
}

# 1. An engine that already answers wins: the user's DOCKER_HOST, then Docker's own socket.
if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "$PODMAN_DOCKER_HOST" ]; then
    if ping "$DOCKER_HOST"; then
        say "the engine at DOCKER_HOST=$DOCKER_HOST answers; nothing to set up."
        exit 0
    fi
    say "DOCKER_HOST=$DOCKER_HOST does not answer; trying Podman instead."
fi
if [ -S /var/run/docker.sock ] && ping unix:///var/run/docker.sock; then
    say "a Docker engine answers on /var/run/docker.sock; nothing to set up."
    exit 0
fi

# 2. Podman: installed with apt-get if missing.
if [ "$(id -u)" -ne 0 ]; then
    no_engine "setting up Podman here needs root"
fi
# Already set up: answer without waiting for the lock.
if ping "$PODMAN_DOCKER_HOST"; then
    say "engine ready: export DOCKER_HOST=$PODMAN_DOCKER_HOST"
    exit 0
fi
# One setter-upper at a time (parallel test sessions, `make run` beside CI). The lock is on
# fd 9, which the service below must not inherit: it would hold the lock for its whole life.
mkdir -p "$SOCKET_DIR"
exec 9>"$SOCKET_DIR/.setup.lock"
if ! flock -w 600 9; then
    no_engine "another setup_podman.sh has held $SOCKET_DIR/.setup.lock for 10 minutes"
fi
if ping "$PODMAN_DOCKER_HOST"; then
    say "engine ready: export DOCKER_HOST=$PODMAN_DOCKER_HOST"
    exit 0
fi
need=()
for pkg in podman runc iptables catatonit curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || no_engine "there is no apt-get to install Podman with (${need[*]} missing)"
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || no_engine "apt-get install ${need[*]} failed"
fi

# 3. Settings: crun refuses hybrid cgroups, so runc; no systemd, so cgroupfs and a
# file events log; no CAP_SYS_RESOURCE, so ulimits a container may actually set.
mkdir -p "$CONF_DIR"
conf='# Written by mlops-assets scripts/setup_podman.sh: settings that work without systemd.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
'
if [ ! -f "$CONF_FILE" ] || [ "$(cat "$CONF_FILE")" != "$(printf '%s' "$conf")" ]; then
    printf '%s' "$conf" > "$CONF_FILE"
    say "wrote $CONF_FILE"
    # A running service read the old settings: restart it.
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        kill "$(cat "$PID_FILE")" && sleep 1
    fi
fi

# 4. The service, started once and left running (it serves `make run`, tests and users).
if ! ping "$PODMAN_DOCKER_HOST"; then
    mkdir -p "$SOCKET_DIR"
    if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        kill "$(cat "$PID_FILE")" || true
        sleep 1
    fi
    rm -f "$SOCKET"
    say "starting podman system service on $SOCKET (log: $LOG_FILE)"
    # setsid + nohup: the service outlives this script and the shell that ran it.
    setsid nohup podman system service --time=0 "$PODMAN_DOCKER_HOST" >"$LOG_FILE" 2>&1 < /dev/null 9>&- &
    echo $! > "$PID_FILE"
    for _ in $(seq 1 50); do
        [ -S "$SOCKET" ] && break
        sleep 0.2
    done
fi

# 5. Check through the same client the assets use.
if ping "$PODMAN_DOCKER_HOST"; then
    say "engine ready: export DOCKER_HOST=$PODMAN_DOCKER_HOST"
    exit 0
fi
tail -n 20 "$LOG_FILE" >&2 2>/dev/null || true
no_engine "podman system service did not answer on $SOCKET (log above)"
