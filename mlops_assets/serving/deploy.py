"""Apply a Serve config to a running Ray instance: `python -m mlops_assets.serving.deploy
RAY_ADDRESS CONFIG.json` (`-`: the config on stdin; or remove the application: `... RAY_ADDRESS
--delete`; print its status as JSON: `... RAY_ADDRESS --status`).

Runs in its own short process so that the caller (Dagster, a test, the benchmark) never holds
a Ray driver: connecting, deploying and disconnecting take a few seconds and leave nothing
behind. The config is Serve's declarative schema (`ServeDeploySchema`): re-applying it with
only a deployment's `user_config` changed reconfigures the running replicas in place
(hot swap); a change of `args` rebuilds the application (rolling restart).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from . import APP_NAME, DEPLOYMENT_NAME


def serve_config(
    args: dict[str, Any],
    user_config: dict[str, Any],
    http_options: dict[str, Any],
    num_replicas: int = 2,
    code_version: str | None = None,
    access_log: bool = False,
    autoscaling: dict[str, Any] | None = None,
    max_replicas_per_node: int | None = None,
) -> dict[str, Any]:
    """`code_version` (a hash of the serving code) goes into the application's runtime_env:
    Serve sees a new code version as an application change and replaces the replicas, which
    import the code afresh; the same code keeps them. `access_log`: Serve's per-request log
    line in the replicas' log files (MLOPS_API_ACCESS_LOG; off by default, docs/performance.md).
    `autoscaling` (Serve's autoscaling_config) replaces the fixed `num_replicas`;
    `max_replicas_per_node` spreads the replicas over a cluster's nodes."""
    deployment: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        **({"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": num_replicas}),
        "user_config": user_config,
        **({"max_replicas_per_node": max_replicas_per_node} if max_replicas_per_node else {}),
    }
    location = http_options.get("location")
    return {
        **({"proxy_location": location} if location else {}),
        "http_options": {k: v for k, v in http_options.items() if k != "location"},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "mlops_assets.serving.app:build_app",
                **({"runtime_env": {"env_vars": {"MLOPS_SERVING_CODE_VERSION": code_version}}} if code_version else {}),
                "args": args,
                "logging_config": {"enable_access_log": access_log},
                "deployments": [deployment],
            }
        ],
    }


def apply(address: str, config: dict[str, Any]) -> None:
    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    ray.init(address=address, namespace="serve", log_to_driver=False, logging_level="WARNING")
    try:
        client = serve_start(http_options=config.get("http_options"), proxy_location=config.get("proxy_location"))
        client.deploy_apps(schema)
    finally:
        ray.shutdown()


def delete(address: str, name: str = APP_NAME) -> None:
    """Remove the application (its replicas stop; the HTTP port answers 404/503 afterwards)."""
    import ray
    from ray import serve

    ray.init(address=address, namespace="serve", log_to_driver=False, logging_level="WARNING")
    try:
        serve.delete(name, _blocking=True)
    finally:
        ray.shutdown()


def status(address: str, name: str = APP_NAME) -> dict[str, Any]:
    """Serve's view of the application: {"status": RUNNING|DEPLOYING|DEPLOY_FAILED|...,
    "message": ..., "deployments": {name: {"status", "message"}}} (NOT_DEPLOYED when absent)."""
    import ray
    from ray import serve

    ray.init(address=address, namespace="serve", log_to_driver=False, logging_level="WARNING")
    try:
        app = serve.status().applications.get(name)
    finally:
        ray.shutdown()
    if app is None:
        return {"status": "NOT_DEPLOYED", "message": "", "deployments": {}}
    return {
        "status": str(getattr(app.status, "value", app.status)),
        "message": app.message or "",
        "deployments": {
            deployment: {"status": str(getattr(d.status, "value", d.status)), "message": d.message or ""}
            for deployment, d in app.deployments.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[1] == "--delete":
        delete(argv[0])
        return 0
    if len(argv) == 2 and argv[1] == "--status":
        print(json.dumps(status(argv[0])))
        return 0
    if len(argv) != 2:
        print("usage: python -m mlops_assets.serving.deploy RAY_ADDRESS CONFIG.json|--delete|--status", file=sys.stderr)
        return 2
    if argv[1] == "-":
        apply(argv[0], json.load(sys.stdin))
        return 0
    with open(argv[1]) as handle:
        apply(argv[0], json.load(handle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
