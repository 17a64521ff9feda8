# The API image's runtime: the serving stack (Ray Serve, scikit-learn, skops, ...) pinned to
# the versions the model was tested with, in /opt/venv, and the `api` user. No model, no
# project code: docker/api.Dockerfile adds those on top. Built by the `container_image` asset
# once per set of requirements, base image and this file (its tag is their hash), from a
# context that mlops_assets/image/context.py assembles:
#
#   requirements.txt   the serving stack pinned, each pin with the sha256 of its wheel
#   wheels/            those exact wheels, so the build needs no index and no network

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
# The user the API runs as (docker/api.Dockerfile switches to it).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/api --shell /usr/sbin/nologin api
COPY --from=builder /opt/venv /opt/venv
