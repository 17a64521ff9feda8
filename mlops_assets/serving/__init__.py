"""The prediction API on Ray Serve (see app.py). Importable without Dagster: a container image
ships this package and its dependencies only.

    model.py    load a model (MLflow URI or folder), its signature, build frames, predict
    schema.py   request/response models from the signature; validation error format
    metrics.py  the API's ray.serve.metrics
    app.py      the FastAPI ingress deployment and its builder `build_app`
    runtime.py  how the Ray instance is started: ports, loopback, fast-path settings, stop
    deploy.py   apply a Serve config to a running instance (a short-lived driver)
"""

# Names shared by the app and the code that deploys it (kept here: importing them must not
# import Ray or FastAPI).
APP_NAME = "mlops-api"
DEPLOYMENT_NAME = "PredictionAPI"
