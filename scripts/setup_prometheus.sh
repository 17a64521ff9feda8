#!/usr/bin/env bash
# Installs Debian's `prometheus` package (server + promtool) if it is missing: the local
# Prometheus that `make run` starts and the rules/config checks of the tests need it.
# Called by `make run` and `make test` (so also by .ci/run). Idempotent and quiet when
# prometheus and promtool are already on PATH.
#
# The package's own service is never started: services are blocked during the install by a
# temporary policy-rc.d (unless the machine already has one). The project runs its own
# Prometheus as the current user (mlops_assets/resources/prometheus.py); the binary needs no root.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "prometheus is not installed and this is not root: run 'sudo apt-get install --no-install-recommends prometheus'" >&2
  echo "(or 'sudo $0'), then 'make run' again" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# temporary, from mlops-assets scripts/setup_prometheus.sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's prometheus package (server and promtool)..."
if ! apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
prometheus --version 2>&1 | head -1
