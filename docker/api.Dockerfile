# The prediction API: the Ray Serve application of mlops_assets/serving with the champion
# model baked in, on top of the runtime image (docker/api-runtime.Dockerfile: the pinned
# serving stack, installed once per set of requirements and base image). Built by the
# `container_image` asset from a context that mlops_assets/image/context.py assembles
# (`python -m mlops_assets.image.context MODEL_DIR DIR` writes both contexts by hand):
#
#   app/               mlops_assets/__init__.py and mlops_assets/serving/ (no Dagster, no MLflow)
#   model/             the champion's MLflow model folder (MLmodel, model.skops, ...)
#
# Why two images: the runtime is about 800 MB and changes only with the requirements or the
# base; the model and the serving code change on every retraining. Built from the runtime
# image by reference, a new model costs a few seconds of build instead of copying (or, when
# cached, hashing) the whole virtual environment again.
#
# Runs as a non-root user; only the API (8000) and metrics (8080) ports are exposed, every
# Ray port stays on the container's loopback (see mlops_assets/serving/container.py).

# localhost/mlops-api-runtime:<hash of requirements, base and runtime Dockerfile>.
ARG RUNTIME_IMAGE
FROM ${RUNTIME_IMAGE}
COPY app/ /opt/app/
COPY model/ /opt/model/

ARG MODEL_NAME=unknown
ARG MODEL_VERSION=unknown
ARG IMAGE_TAG=unknown
# A hash of everything but the model (ImageInputs.code_tag): images with the same one differ
# only in /opt/model, and a cluster moves between them without new containers (the api role).
ARG SERVING_CODE=unknown
# The sha256 manifest registered with the model (checked at build time); the API refuses to
# load /opt/model when its files differ (mlops_assets/serving/model.py).
ARG MODEL_FILES_SHA256=
# The engine selected_model recorded for the version: onnx (ONNX Runtime over model.onnx) or
# sklearn, and why not ONNX (shown by /readyz).
ARG SERVING_ENGINE=sklearn
ARG SERVING_ENGINE_REASON=
LABEL org.opencontainers.image.title="mlops-assets prediction API" \
      org.opencontainers.image.source="https://github.com/mlops-assets/mlops-assets" \
      mlops.model.name="${MODEL_NAME}" \
      mlops.model.version="${MODEL_VERSION}" \
      mlops.image.tag="${IMAGE_TAG}" \
      mlops.serving.code="${SERVING_CODE}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLOPS_MODEL_DIR=/opt/model \
    MLOPS_MODEL_FILES_SHA256=${MODEL_FILES_SHA256} \
    MLOPS_SERVING_ENGINE=${SERVING_ENGINE} \
    MLOPS_SERVING_ENGINE_REASON=${SERVING_ENGINE_REASON} \
    MLOPS_API_HOST=0.0.0.0 \
    MLOPS_API_PORT=8000 \
    MLOPS_METRICS_PORT=8080

USER api
WORKDIR /home/api
EXPOSE 8000 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "mlops_assets.serving.container", "healthcheck"]
ENTRYPOINT ["python", "-m", "mlops_assets.serving.container"]
