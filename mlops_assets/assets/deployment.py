"""`deployed_api`: the champion served by the prediction API (local target: Ray Serve on this
machine, on loopback)."""

import math
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from mlops_assets import serving
from mlops_assets.ml.data import Dataset
from mlops_assets.resources import ray_serve as ray_serve_module
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.ray_serve import RayServe
from mlops_assets.versioning import code_version_of

from .training import SelectedModel

# The serving package and the resource that deploys it: a change to either redeploys.
SERVING_CODE_VERSION = code_version_of(Path(serving.__file__).parent, ray_serve_module)
SMOKE_ROWS = 3


@dataclass(frozen=True)
class DeployedApi:
    """The `deployed_api` asset's value: where the API answers and what it serves."""

    url: str
    metrics_url: str
    model_name: str
    model_version: str
    action: str

    def curl_example(self, instance: dict) -> str:
        import json

        return (
            f"curl -s -X POST {self.url}/predict -H 'Content-Type: application/json' "
            f"-d '{json.dumps({'instances': [instance]})}'"
        )


def smoke_instances(dataset: Dataset, rows: int = SMOKE_ROWS) -> tuple[list[dict], list[str]]:
    """The first test rows as JSON instances (NaN -> null, the API's "missing")."""
    x_test, y_test = dataset.xy("test")
    records = x_test.head(rows).to_dict(orient="records")
    instances = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()} for record in records
    ]
    return instances, [str(y) for y in y_test[:rows]]


@dg.asset(
    code_version=SERVING_CODE_VERSION,
    kinds={"ray", "fastapi"},
    group_name="serving",
    # Runs on every `make run` (cheap when nothing changed): the API may be down while fresh.
    tags={"mlops/always_check": "true"},
    description="The champion model behind the prediction API (Ray Serve, FastAPI): deployed, ready, smoke-tested.",
)
def deployed_api(
    context: dg.AssetExecutionContext,
    ray_serve: RayServe,
    mlflow: MlflowRegistry,
    selected_model: SelectedModel,
    dataset: Dataset,
) -> dg.Output[DeployedApi]:
    # What users call. The served version is the data version: a re-run with the same champion
    # finds the API already serving it and touches nothing; a new champion is swapped in place.
    try:
        deployment = ray_serve.deploy(
            selected_model.model_uri, selected_model.version, tracking_uri=mlflow.tracking_uri, log=context.log
        )
    except ray_serve_module.RayServeError as exc:
        raise dg.Failure(description=str(exc)) from None
    instances, truth = smoke_instances(dataset)
    answer, seconds = ray_serve.predict(instances)
    context.log.info(f"smoke prediction in {seconds * 1000:.1f} ms: {answer['predictions']} (true: {truth})")
    api = DeployedApi(
        url=ray_serve.api_url,
        metrics_url=ray_serve.metrics_url,
        model_name=deployment.name,
        model_version=deployment.version,
        action=deployment.action,
    )
    context.log.info(f"API: {api.url}/docs   metrics: {api.metrics_url}\n  {api.curl_example(instances[0])}")
    return dg.Output(
        api,
        data_version=dg.DataVersion(f"{deployment.name}/{deployment.version}"),
        metadata={
            "url": dg.MetadataValue.url(f"{api.url}/docs"),
            "metrics": dg.MetadataValue.url(api.metrics_url),
            "model_version": deployment.version,
            "action": deployment.action,
            "deploy_seconds": round(deployment.seconds, 2),
            "smoke_latency_ms": round(seconds * 1000, 2),
            "smoke_predictions": dg.MetadataValue.json(answer["predictions"]),
            "smoke_truth": dg.MetadataValue.json(truth),
            "smoke_answer": dg.MetadataValue.json(answer),
            "curl": dg.MetadataValue.md(f"```\n{api.curl_example(instances[0])}\n```"),
        },
    )
