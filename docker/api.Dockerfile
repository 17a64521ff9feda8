# The prediction API: the Ray Serve application of mlops_assets/serving with the champion
# model baked in. Built by the `container_image` asset from a context that
# mlops_assets/image/context.py assembles (`python -m mlops_assets.image.context DIR` writes
# one by hand):
#
#   requirements.txt   the serving stack pinned to the versions the model was tested with,
#                      each with the sha256 of its wheel
#   wheels/            those exact wheels, so the build needs no index and no network
#   app/               mlops_assets/__init__.py and mlops_assets/serving/ (no Dagster, no MLflow)
#   model/             the champion's MLflow model folder (MLmodel, model.skops, ...)
#
# Runs as a non-root user; only the API (8000) and metrics (8080) ports are exposed, every
# Ray port stays on the container's loopback (see mlops_assets/serving/container.py).

# Any Debian-based image with Python 3.11 (the version the wheels are for): the official slim
# image by default; tests and offline machines use localhost/mlops-debian-base:bookworm.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
COPY requirements.txt /build/requirements.txt
COPY wheels/ /build/wheels/
# Every pin carries its wheel's sha256 (mlops_assets/image/requirements.py): pip installs
# nothing whose bytes differ, and nothing unpinned.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --require-hashes \
        --find-links /build/wheels --requirement /build/requirements.txt \
 && cd /opt/venv/lib/python3*/site-packages/ray \
 && rm -rf jars rllib dashboard/client/build

FROM ${BASE_IMAGE}
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/api --shell /usr/sbin/nologin api
COPY --from=builder /opt/venv /opt/venv
COPY app/ /opt/app/
COPY model/ /opt/model/

ARG MODEL_NAME=unknown
ARG MODEL_VERSION=unknown
ARG IMAGE_TAG=unknown
# The sha256 manifest registered with the model (checked at build time); the API refuses to
# load /opt/model when its files differ (mlops_assets/serving/model.py).
ARG MODEL_FILES_SHA256=
LABEL org.opencontainers.image.title="mlops-assets prediction API" \
      org.opencontainers.image.source="https://github.com/mlops-assets/mlops-assets" \
      mlops.model.name="${MODEL_NAME}" \
      mlops.model.version="${MODEL_VERSION}" \
      mlops.image.tag="${IMAGE_TAG}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLOPS_MODEL_DIR=/opt/model \
    MLOPS_MODEL_FILES_SHA256=${MODEL_FILES_SHA256} \
    MLOPS_API_HOST=0.0.0.0 \
    MLOPS_API_PORT=8000 \
    MLOPS_METRICS_PORT=8080

USER api
WORKDIR /home/api
EXPOSE 8000 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "mlops_assets.serving.container", "healthcheck"]
ENTRYPOINT ["python", "-m", "mlops_assets.serving.container"]
