#!/bin/sh
# The PostgreSQL image's entrypoint (docker/postgres.Dockerfile). On the first start, with an
# empty data folder, it creates the cluster like the official postgres image: superuser
# POSTGRES_USER (default postgres) whose password is the first line of POSTGRES_PASSWORD_FILE,
# scram-sha-256 for every TCP client, trust only on the container's own Unix socket (what
# pg_isready and `docker exec ... psql` use). Later starts find the cluster and just run it.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD_FILE:-}" ] || [ ! -r "$POSTGRES_PASSWORD_FILE" ]; then
    echo "postgres-entrypoint: $PGDATA holds no cluster and POSTGRES_PASSWORD_FILE" \
         "(${POSTGRES_PASSWORD_FILE:-unset}) is not a readable file: no cluster is created without a password" >&2
    exit 1
  fi
  initdb --pgdata="$PGDATA" --username="${POSTGRES_USER:-postgres}" --pwfile="$POSTGRES_PASSWORD_FILE" \
         --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
  printf '%s\n' "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  printf '%s\n' "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
fi
exec "$@"
