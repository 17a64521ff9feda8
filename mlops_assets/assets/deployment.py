"""`deployed_api`: the champion behind the prediction API, deployed and smoke-tested.

The `api_deployer` resource does the work (resources/api_deployer.py): Ray Serve on this
machine in `local`, the container image on the API hosts through Ansible's `api` role in
`aws` and `sim`. Either way a new version must report ready and answer a smoke prediction,
or it is rolled back and the asset fails saying so.
"""

import math
from pathlib import Path
from typing import Optional

import dagster as dg

from mlops_assets import rollout, serving
from mlops_assets.freshness import LIVE_SERVICE_TAG, rebuild_condition
from mlops_assets.image.build import ContainerImage
from mlops_assets.ml.data import Dataset
from mlops_assets.resources import api_deployer as api_deployer_module
from mlops_assets.resources import ray_serve as ray_serve_module
from mlops_assets.resources.api_deployer import ApiDeployer, DeployedApi
from mlops_assets.resources.hosts import DeployedHosts
from mlops_assets.retries import EXTERNAL_STEP_RETRY
from mlops_assets.versioning import code_version_of

from .training import SelectedModel

# The serving package and the code that deploys it: a change to either redeploys.
SERVING_CODE_VERSION = code_version_of(Path(serving.__file__).parent, api_deployer_module, ray_serve_module, rollout,
                                       *[d for d in (api_deployer_module.API_ROLE_DIR,) if d.is_dir()])
SMOKE_ROWS = 3


def smoke_rows(dataset: Dataset, rows: int = SMOKE_ROWS) -> tuple[list[dict], list[str]]:
    """The first test rows as JSON instances (NaN -> null, the API's "missing"), and their labels."""
    # Straight from polars: going through pandas (Dataset.xy) would import it on every
    # no-change run for three rows.
    head = dataset.test.head(rows)
    records = head.select(dataset.features).to_dicts()
    instances = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]
    return instances, [str(y) for y in head.get_column(dataset.target).to_list()]


@dg.asset(
    automation_condition=rebuild_condition(),
    retry_policy=EXTERNAL_STEP_RETRY,
    code_version=SERVING_CODE_VERSION,
    kinds={"ray", "fastapi"},
    group_name="serving",
    # Runs on every `make run` (cheap when nothing changed): the API may be down while fresh.
    tags={LIVE_SERVICE_TAG: "true"},
    description="The champion model behind the prediction API (Ray Serve, FastAPI): deployed, ready, smoke-tested. "
    "local: on the local Ray instance; aws/sim: the container image on the api host, through Ansible.",
)
def deployed_api(
    context: dg.AssetExecutionContext,
    api_deployer: ApiDeployer,
    selected_model: SelectedModel,
    dataset: Dataset,
    # The container targets deploy these; in `local` they only order the graph.
    container_image: Optional[ContainerImage],
    deployed_hosts: Optional[DeployedHosts],
) -> dg.Output[DeployedApi]:
    # What users call. Its data version is what it serves: the same champion (and image, and
    # hosts) finds the API already serving it and touches nothing.
    instances, truth = smoke_rows(dataset)
    result = api_deployer.deploy(selected_model.champion, instances, image=container_image, hosts=deployed_hosts,
                                 log=context.log)
    api, curl = result.api, result.api.curl_example(instances[0])
    context.log.info(f"smoke prediction in {result.smoke_seconds * 1000:.1f} ms: {result.smoke_answer['predictions']} "
                     f"(true: {truth})\nAPI: {api.url}/docs   metrics: {api.metrics_url}\n  {curl}")
    return dg.Output(api, data_version=dg.DataVersion(result.data_version), metadata={
        "url": dg.MetadataValue.url(f"{api.url}/docs"),
        "metrics": dg.MetadataValue.url(api.metrics_url),
        "model_version": api.model_version,
        "action": api.action,
        **result.details,
        "smoke_latency_ms": round(result.smoke_seconds * 1000, 2),
        "smoke_predictions": dg.MetadataValue.json(result.smoke_answer["predictions"]),
        "smoke_truth": dg.MetadataValue.json(truth),
        "smoke_answer": dg.MetadataValue.json(result.smoke_answer),
        "curl": dg.MetadataValue.md(f"```\n{curl}\n```"),
    })
