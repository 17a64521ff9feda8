# PostgreSQL from Debian's package on the offline Debian base, with the official `postgres`
# image's interface, so the `tracking_server` role runs either through the same variables:
# user postgres with uid/gid 999, PGDATA=/var/lib/postgresql/data (a volume), the server
# binaries on PATH (pg_isready for the health check), and on the first start with an empty
# data folder an initdb whose superuser POSTGRES_USER gets the password in
# POSTGRES_PASSWORD_FILE (docker/postgres-entrypoint.sh). Built by
# mlops_assets/image/tracking_server.py (tag: a hash of this file, the entrypoint and the base).
ARG BASE_IMAGE=localhost/mlops-debian-base:bookworm
FROM ${BASE_IMAGE}
# The user first, with the official image's ids: the package's postinst keeps an existing
# postgres user. No cluster from the package: the entrypoint creates one in the volume. Left
# out of the layer: LLVM (JIT compilation, off: 105 MB the tracking store's small queries never
# use), message translations, docs and man pages.
RUN groupadd --system --gid 999 postgres \
 && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/sh postgres \
 && mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && rm -rf /usr/lib/x86_64-linux-gnu/libLLVM-*.so* /usr/lib/postgresql/15/lib/llvmjit* \
           /usr/lib/postgresql/15/lib/bitcode /usr/share/locale /usr/share/doc /usr/share/man \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres", "-c", "jit=off"]
