#!/usr/bin/env bash
# Build the offline Debian 12 base (debootstrap, no registry needed) and import it as
# localhost/mlops-debian-base:bookworm into the engine DOCKER_HOST names; cached, so a second
# run only checks. `--host-layer` also builds the rehearsal hosts' layer. See
# mlops_assets/offline_base.py for what is in each.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ -z "${DOCKER_HOST:-}" ] && [ ! -S /var/run/docker.sock ]; then
    DOCKER_HOST=$(scripts/setup_podman.sh --print-docker-host)
    export DOCKER_HOST
fi
exec "$PYTHON" -m mlops_assets.offline_base "$@"
