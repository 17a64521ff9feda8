"""Apply a Serve config to a running Ray instance: `python -m mlops_assets.serving.deploy CONFIG.json`.

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
) -> dict[str, Any]:
    return {
        "http_options": http_options,
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "mlops_assets.serving.app:build_app",
                "args": args,
                "deployments": [
                    {"name": DEPLOYMENT_NAME, "num_replicas": num_replicas, "user_config": user_config},
                ],
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
        client = serve_start(http_options=config.get("http_options"))
        client.deploy_apps(schema)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m mlops_assets.serving.deploy RAY_ADDRESS CONFIG.json", file=sys.stderr)
        return 2
    with open(argv[1]) as handle:
        apply(argv[0], json.load(handle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
