#!/usr/bin/env bash
# Installs Debian's `postgresql` package (server binaries: initdb, pg_ctl, postgres) if missing,
# for the tests that start throwaway PostgreSQL clusters of their own (test_postgres_state.py:
# Dagster's instance and the MLflow store on PostgreSQL). Called by `make test` (so by .ci/run);
# `make run` never needs it: sqlite is the default (docs/operations.md, "State on PostgreSQL").
# Idempotent and quiet when a server is already installed. Prints the binaries' folder with
# --print-bindir.
#
# Debian's own cluster (15/main on port 5432) is not started by this script: services are
# blocked during the install by a temporary policy-rc.d (unless the machine already has one). A
# user who wants that cluster for the local target starts it with `pg_ctlcluster 15 main start`.
set -euo pipefail

bindir() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$found" ] && [ -x "$found/initdb" ] && [ -x "$found/pg_ctl" ] && echo "$found"
}

if ! bindir >/dev/null; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup_postgres: no PostgreSQL server here; as root on Debian/Ubuntu this script installs it (apt-get install postgresql)" >&2
    exit 1
  fi
  echo "setup_postgres: installing Debian's postgresql package" >&2
  policy=/usr/sbin/policy-rc.d
  added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; added_policy=1
  fi
  trap '[ "$added_policy" = 1 ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq postgresql >/dev/null || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
fi
if [ "${1:-}" = "--print-bindir" ]; then bindir; fi
