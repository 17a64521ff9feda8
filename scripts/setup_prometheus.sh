#!/usr/bin/env bash
# Installs Debian's `prometheus` package (server + promtool) and `prometheus-node-exporter` if
# missing: the local Prometheus that `make run` starts (with a node_exporter on loopback for the
# hosts dashboard) and the rules/config checks of the tests need them.
# Called by `make run` and `make test` (so also by .ci/run). Idempotent and quiet when
# prometheus and promtool are already on PATH.
#
# The package's own service is never started: services are blocked during the install by a
# temporary policy-rc.d (unless the machine already has one). The project runs its own
# Prometheus as the current user (mlops_assets/resources/prometheus.py); the binary needs no root.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v prometheus-node-exporter >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "prometheus is not installed and this is not root: run" >&2
  echo "'sudo apt-get install --no-install-recommends prometheus prometheus-node-exporter'" >&2
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
packages=(prometheus prometheus-node-exporter)
echo "installing Debian's ${packages[*]} (server, promtool, node_exporter)..."
if ! apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
prometheus --version 2>&1 | head -1
