#!/bin/sh
# The tracking server image's entrypoint: `mlflow server` with the container's arguments.
# MLflow reads the basic-auth app's CSRF key (MLFLOW_FLASK_SERVER_SECRET_KEY) from the
# environment only; with MLFLOW_FLASK_SERVER_SECRET_KEY_FILE it is read from that file here,
# so the secret is in no container configuration (`docker inspect`).
set -eu
if [ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY_FILE:-}" ]; then
  MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$MLFLOW_FLASK_SERVER_SECRET_KEY_FILE")
  export MLFLOW_FLASK_SERVER_SECRET_KEY
fi
exec mlflow server "$@"
