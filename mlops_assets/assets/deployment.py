"""`deployed_api`: the champion served by the prediction API.

- `local`: Ray Serve on this machine, on loopback (the `ray_serve` resource); the
  container_image and deployed_hosts inputs only order the graph (this machine needs neither).
  The new version must report ready and answer a smoke prediction with its own version;
  otherwise the resource rolls back to the last healthy version and the asset fails saying so.
- `aws`, `sim`: the `container_image` runs on the api host of `deployed_hosts`: Ansible's
  `api` role loads the image (archive shipped by Ansible, or pulled from the registry), runs it,
  waits for /readyz with the champion's version (rolling back when it never gets ready), then a
  smoke prediction goes through the api host's own address (assets/hosts.py,
  `deploy_api_to_hosts`).
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import dagster as dg

from mlops_assets import serving
from mlops_assets.automation import follows_upstream_data_versions
from mlops_assets.ml.data import Dataset
from mlops_assets.resources import ray_serve as ray_serve_module
from mlops_assets.resources.ansible import Ansible, AnsibleError
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.ray_serve import RayServe
from mlops_assets.retries import EXTERNAL_STEP_RETRY
from mlops_assets.versioning import code_version_of, stable_hash

from .hosts import DeployedHosts, deploy_api_to_hosts
from .packaging import ContainerImage
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
    # Container targets: the hosts' inventory and their Prometheus (what `dashboards` provisions).
    inventory: dict | None = None
    prometheus_url: str | None = None

    def curl_example(self, instance: dict) -> str:
        import json

        return (
            f"curl -s -X POST {self.url}/predict -H 'Content-Type: application/json' "
            f"-d '{json.dumps({'instances': [instance]})}'"
        )


def smoke_check(instances: list[dict], version: str):
    """The health check of a local deployment after /readyz: one prediction of `instances`,
    answered by model `version` with one label per row. Returns (answer, seconds)."""

    def check(api: RayServe) -> tuple[dict, float]:
        answer, seconds = api.predict(instances)
        served = (answer.get("model") or {}).get("version")
        if served != version:
            raise ray_serve_module.RayServeError(f"the smoke prediction was answered by model version {served}")
        if len(answer.get("predictions") or []) != len(instances):
            raise ray_serve_module.RayServeError(
                f"the smoke prediction returned {len(answer.get('predictions') or [])} labels for {len(instances)} rows"
            )
        return answer, seconds

    return check


def smoke_instances(dataset: Dataset, rows: int = SMOKE_ROWS) -> tuple[list[dict], list[str]]:
    """The first test rows as JSON instances (NaN -> null, the API's "missing")."""
    x_test, y_test = dataset.xy("test")
    records = x_test.head(rows).to_dict(orient="records")
    instances = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()} for record in records
    ]
    return instances, [str(y) for y in y_test[:rows]]


@dg.asset(
    automation_condition=follows_upstream_data_versions(),
    retry_policy=EXTERNAL_STEP_RETRY,
    code_version=SERVING_CODE_VERSION,
    kinds={"ray", "fastapi"},
    group_name="serving",
    # Runs on every `make run` (cheap when nothing changed): the API may be down while fresh.
    tags={"mlops/always_check": "true"},
    description="The champion model behind the prediction API (Ray Serve, FastAPI): deployed, ready, smoke-tested. "
    "local: on the local Ray instance; aws/sim: the container image on the api host, through Ansible.",
)
def deployed_api(
    context: dg.AssetExecutionContext,
    ray_serve: RayServe,
    mlflow: MlflowRegistry,
    ansible: Ansible,
    selected_model: SelectedModel,
    dataset: Dataset,
    # Only the container targets use these two; in `local` they just order the graph.
    container_image: Optional[ContainerImage],
    deployed_hosts: Optional[DeployedHosts],
) -> dg.Output[DeployedApi]:
    if ansible.enabled:  # aws, sim: the image on the hosts
        return _deploy_on_hosts(context, ansible, selected_model, dataset, container_image, deployed_hosts)
    # What users call. The served version is the data version: a re-run with the same champion
    # finds the API already serving it and touches nothing; a new champion is swapped in place.
    # A new version that fails its health check (ready, then the smoke prediction) is rolled back.
    instances, truth = smoke_instances(dataset)
    try:
        deployment = ray_serve.deploy(
            selected_model.model_uri, selected_model.version, tracking_uri=mlflow.tracking_uri, log=context.log,
            check=smoke_check(instances, selected_model.version),
        )
    except ray_serve_module.DeployFailed as exc:
        # Rolled back or not, deploying the same version again would fail the same way; a
        # failure before anything was applied (the registry, a download) may be transient.
        raise dg.Failure(description=str(exc), metadata=exc.metadata(), allow_retries=not exc.applied) from None
    except ray_serve_module.RayServeError as exc:
        raise dg.Failure(description=str(exc)) from None
    answer, seconds = deployment.check_result
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
            "previous_version": deployment.previous_version or "none",
            "deploy_seconds": round(deployment.seconds, 2),
            "smoke_latency_ms": round(seconds * 1000, 2),
            "smoke_predictions": dg.MetadataValue.json(answer["predictions"]),
            "smoke_truth": dg.MetadataValue.json(truth),
            "smoke_answer": dg.MetadataValue.json(answer),
            "curl": dg.MetadataValue.md(f"```\n{api.curl_example(instances[0])}\n```"),
        },
    )


def archive_image_name(archive: str) -> str | None:
    """The repository:tag a `docker load` of this archive gives (its manifest's RepoTags):
    Podman saves short names as localhost/NAME:TAG, and the host's Docker keeps that name."""
    import json
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            manifest = json.load(member) if member else []
    except (OSError, KeyError, tarfile.TarError, ValueError):
        return None
    tags = [t for entry in manifest for t in (entry.get("RepoTags") or [])]
    return tags[0] if tags else None


def _deploy_on_hosts(
    context: dg.AssetExecutionContext,
    ansible: Ansible,
    selected_model: SelectedModel,
    dataset: Dataset,
    image: ContainerImage,
    hosts: DeployedHosts,
) -> dg.Output[DeployedApi]:
    """Container targets: the image that serves the champion, run by the `api` role on the
    api host; a second run with the same image and hosts changes nothing (changed=0)."""
    if image.ref is None:
        raise dg.Failure(description=f"container_image was not built ({image.skipped}); the {ansible.target} target needs it")
    if str(image.model_version) != str(selected_model.version):
        raise dg.Failure(
            description=f"container_image serves model version {image.model_version} but the champion is "
            f"{selected_model.version}: materialize container_image first"
        )
    # An archive when there is no registry (sim; aws without MLOPS_IMAGE_REGISTRY), else a pull.
    archive = None if image.remote_ref else image.archive
    image_ref = image.remote_ref or (archive_image_name(archive) if archive else None) or image.ref
    instances, truth = smoke_instances(dataset)
    try:
        result = deploy_api_to_hosts(
            ansible, hosts, image_ref=image_ref, model_version=str(selected_model.version),
            instances=instances, image_archive=archive, log=context.log.info,
        )
    except AnsibleError as exc:
        raise dg.Failure(description=str(exc)) from None
    except RuntimeError as exc:  # the smoke prediction through the api host's address
        raise dg.Failure(description=str(exc)) from None
    api = DeployedApi(
        url=result.url,
        metrics_url=result.metrics_url,
        model_name=selected_model.name,
        model_version=result.model_version,
        action="deployed" if result.changed else "unchanged (the api host already ran this image)",
        inventory=hosts.inventory,
        prometheus_url=hosts.prometheus_url,
    )
    predictions = result.smoke_answer.get("predictions")
    context.log.info(f"API: {api.url}/docs   metrics: {api.metrics_url}\n  {api.curl_example(instances[0])}")
    return dg.Output(
        api,
        # Same image on the same hosts: the same version, nothing downstream becomes stale.
        data_version=dg.DataVersion(stable_hash({"image": image_ref, "url": api.url, "model": api.model_version})),
        metadata={
            "url": dg.MetadataValue.url(f"{api.url}/docs"),
            "metrics": dg.MetadataValue.url(api.metrics_url),
            "model_version": api.model_version,
            "action": api.action,
            "image": image_ref,
            "image_source": "archive" if archive else "registry",
            "changed": result.changed,
            "per_host": dg.MetadataValue.json(result.per_host),
            "ansible_seconds": result.ansible_seconds,
            "smoke_latency_ms": round(result.smoke_seconds * 1000, 2),
            "smoke_predictions": dg.MetadataValue.json(predictions),
            "smoke_truth": dg.MetadataValue.json(truth),
            "smoke_answer": dg.MetadataValue.json(result.smoke_answer),
            "curl": dg.MetadataValue.md(f"```\n{api.curl_example(instances[0])}\n```"),
        },
    )
