# The MLflow tracking server's image: `mlflow server` (the mlflow package with its
# basic-auth app, at setup.py's pin), boto3 for the S3 artifact store and psycopg2 for the
# PostgreSQL stores, in /opt/venv, run as the `mlflow` user. Built by
# mlops_assets/image/tracking_server.py once per set of requirements, base image and this file
# (its tag is their hash), from a context of:
#
#   requirements.txt   the closure of mlflow[auth], boto3 and psycopg2-binary, pinned to this
#                      environment's versions, each pin with the sha256 of its wheel, without
#                      the client-side packages the server never imports (scikit-learn, scipy,
#                      pyarrow, matplotlib, skops: image/tracking_server.py LEAVE_OUT)
#   wheels/            those exact wheels, so the build needs no index and no network
#   entrypoint.sh      docker/tracking-server-entrypoint.sh: `mlflow server`, its CSRF key
#                      read from MLFLOW_FLASK_SERVER_SECRET_KEY_FILE
#
# The ansible role `tracking_server` runs it with `mlflow server` arguments (the entrypoint).

# Any Debian-based image with Python 3.11 (the version the wheels are for): the official slim
# image by default; tests and offline machines use localhost/mlops-debian-base:bookworm.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
COPY requirements.txt /build/requirements.txt
COPY wheels/ /build/wheels/
# Every pin carries its wheel's sha256: pip installs nothing whose bytes differ, nothing unpinned.
# --no-deps: requirements.txt is the whole closure already, less what LEAVE_OUT names (which
# mlflow declares, so pip's resolver would ask for it).
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --require-hashes \
        --no-deps --find-links /build/wheels --requirement /build/requirements.txt

FROM ${BASE_IMAGE}
RUN useradd --uid 10002 --user-group --create-home --home-dir /home/mlflow --shell /usr/sbin/nologin mlflow
COPY --from=builder /opt/venv /opt/venv
COPY entrypoint.sh /usr/local/bin/mlflow-server
# `mlflow server` starts uvicorn (or gunicorn) by name: the venv's bin must be on PATH.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10002
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
