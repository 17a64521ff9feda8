"""The API deployer: puts the champion behind the prediction API, health-checks it, and says
where it answers. One class per kind of target, chosen in targets.py; `deployed_api` calls
`deploy()` without knowing which:

- `RayServeOnThisMachine` (`local`): the Serve application on the local Ray instance, on
  loopback (resources/ray_serve.py); a new version is swapped in place, then must report ready
  and answer a smoke prediction with its own version, or it is rolled back (rollout.py).
- `ImageOnApiHosts` (`aws`, `sim`): the image `container_image` built, run on the API host by
  Ansible's `api` role (which waits for /readyz with the champion's version and restores the
  previous image when it never gets ready), then a smoke prediction through the host's address.

Both health-check through the same client (serving/client.py) and return a `DeployedApi`.
"""

from __future__ import annotations

import json
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mlops_assets.image.build import ContainerImage
from mlops_assets.resources.ansible import Ansible, AnsibleError, inventory_hosts
from mlops_assets.resources.hosts import API_TAG, DeployedHosts, group_var
from mlops_assets.resources.mlflow_registry import Champion
from mlops_assets.resources.ray_serve import RayServe
from mlops_assets.rollout import DeployFailed, RolloutError
from mlops_assets.serving.client import ApiClient, ApiError
from mlops_assets.settings import PROJECT_ROOT
from mlops_assets.state import StateFile
from mlops_assets.versioning import code_version_of, stable_hash

# The `api` role: a change to it redeploys the API on the hosts even with the same image.
API_ROLE_DIR = PROJECT_ROOT / "ansible_roles" / "api"



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
    # Every API host's URL when there are several (the nodes of one Ray cluster); else `url` alone.
    urls: tuple[str, ...] = ()

    @property
    def every_url(self) -> tuple[str, ...]:
        """Where the API answers: each API host (the `deployed_api` check probes them all)."""
        return self.urls or (self.url,)

    def curl_example(self, instance: dict) -> str:
        return (f"curl -s -X POST {self.url}/predict -H 'Content-Type: application/json' "
                f"-d '{json.dumps({'instances': [instance]})}'")


@dataclass(frozen=True)
class ApiResult:
    """What `deploy` did: the value, its data version, the smoke answer and target details."""

    api: DeployedApi
    data_version: str
    smoke_answer: dict[str, Any]
    smoke_seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class ApiDeployer(dg.ConfigurableResource):
    """Serves the champion (see the module docstring)."""

    def deploy(self, champion: Champion, smoke_rows: list[dict], *, image: ContainerImage | None,
               hosts: DeployedHosts | None, log) -> ApiResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> int:
        """Stop what this deployer runs on this machine (`make down`); how many processes ended."""
        return 0

    def before_hosts_removed(self, outputs: dict, instance_ids: list[str], log) -> str:
        """`tofu_state` calls this before OpenTofu destroys API instances (`instance_ids`, of
        the hosts in `outputs`' inventory): take them out of service without failing requests.
        What happened, in a line for the asset's metadata."""
        return "nothing to drain on this target"


class RayServeOnThisMachine(ApiDeployer):
    """`local`: the champion on the local Ray Serve instance (loopback)."""

    ray_serve: RayServe

    def deploy(self, champion: Champion, smoke_rows: list[dict], *, image: ContainerImage | None,
               hosts: DeployedHosts | None, log) -> ApiResult:
        # The container_image and deployed_hosts inputs only order the graph: this machine
        # needs neither. The served version is the data version: the same champion finds the
        # API already serving it and touches nothing.
        client = self.ray_serve.client()
        try:
            deployment = self.ray_serve.deploy(
                champion.model_uri, champion.version, tracking_uri=champion.tracking_uri, log=log.info,
                check=lambda: client.smoke_check(smoke_rows, champion.version), engine=champion.engine or None,
            )
        except DeployFailed as exc:
            # Rolled back or not, the same version would fail the same way; a failure before
            # anything was applied (the registry, a download) may be transient.
            raise dg.Failure(description=str(exc), metadata=exc.metadata(), allow_retries=not exc.applied) from None
        except RolloutError as exc:
            raise dg.Failure(description=str(exc)) from None
        answer, seconds = deployment.check_result
        api = DeployedApi(url=self.ray_serve.api_url, metrics_url=self.ray_serve.metrics_url,
                          model_name=deployment.name, model_version=deployment.version, action=deployment.action)
        return ApiResult(api, f"{deployment.name}/{deployment.version}", answer, seconds, details={
            "previous_version": deployment.previous_version or "none",
            "deploy_seconds": round(deployment.seconds, 2),
        })

    def stop(self) -> int:
        return self.ray_serve.shutdown()


class ImageOnApiHosts(ApiDeployer):
    """`aws`, `sim`: the API image run on the API host by the `api` role."""

    ansible: Ansible
    record_file: str  # state.RECORDS["api_deployed"]: the last deployment that passed its smoke test
    ready_timeout_s: int = 180
    # The API keys the api role installs (MLOPS_API_KEY_FILE): the smoke checks send the first.
    api_key_file: str | None = None

    def deploy(self, champion: Champion, smoke_rows: list[dict], *, image: ContainerImage | None,
               hosts: DeployedHosts | None, log) -> ApiResult:
        if image is None or image.ref is None:
            why = image.skipped if image is not None else "no image"
            raise dg.Failure(description=f"container_image was not built ({why}); the {self.ansible.target} target needs it")
        if str(image.model_version) != str(champion.version):
            raise dg.Failure(description=f"container_image serves model version {image.model_version} but the champion is "
                                         f"{champion.version}: materialize container_image first")
        if hosts is None or not hosts.api_addresses:
            raise dg.Failure(description="deployed_hosts names no api host: materialize tofu_state and deployed_hosts first")
        # An archive when there is no registry (sim; aws without MLOPS_IMAGE_REGISTRY), else a pull.
        archive = None if image.remote_ref else image.archive
        image_ref = image.remote_ref or (archive_image_name(archive) if archive else None) or image.ref
        port = group_var(hosts.inventory, 'api', 'api_port', 8000)
        # Every API host answers (more than one: the nodes of one Ray cluster, each with a proxy).
        urls = [f"http://{address}:{port}" for address in hosts.api_addresses]
        url = urls[0]
        metrics_url = f"http://{hosts.api_addresses[0]}:{group_var(hosts.inventory, 'api', 'metrics_port', 8080)}/metrics"
        api_key = _first_key(self.api_key_file)
        clients = [ApiClient(each, api_key=api_key) for each in urls]
        record = StateFile(self.record_file)
        role = code_version_of(API_ROLE_DIR) if API_ROLE_DIR.is_dir() else None
        wanted = {"image": image_ref, "url": url, "model_version": str(champion.version), "role": role,
                  **({"urls": urls} if len(urls) > 1 else {})}
        changed, per_host, ansible_seconds, smokes = 0, {}, 0.0, None
        if record.read() == wanted and all(client.ready_version() == str(champion.version) for client in clients):
            try:  # nothing new to deploy and every API host answers ready with that version
                smokes = [client.smoke_check(smoke_rows, champion.version) for client in clients]
                log.info(f"the api hosts already run {image_ref} and answer with version {champion.version}: "
                         "Ansible not run")
            except ApiError as exc:
                log.warning(f"the api hosts answer ready but a smoke prediction failed ({exc}): deploying again")
        try:
            if smokes is None:
                record.remove()  # from here until the smoke test passes, nothing is known good
                result = self.ansible.run_playbook(hosts.inventory, "site.yml", tags=[API_TAG], log=log.info,
                                                   extra_vars=self._role_vars(image_ref, archive, champion.version,
                                                                              None if image.remote_ref else image.runtime_archive))
                changed, per_host, ansible_seconds = result.changed, result.per_host, result.seconds
                smokes = [client.smoke_check(smoke_rows, champion.version) for client in clients]
        except (AnsibleError, ApiError) as exc:
            raise dg.Failure(description=str(exc)) from None
        answer, seconds = smokes[0]
        record.write(wanted)
        for each, (reply, took) in zip(urls, smokes):
            log.info(f"smoke prediction through {each}/predict in {took * 1000:.0f} ms: {reply.get('predictions')}")
        api = DeployedApi(url=url, metrics_url=metrics_url, model_name=champion.name, model_version=str(champion.version),
                          action="deployed" if changed else "unchanged (the api host already ran this image)",
                          inventory=hosts.inventory, prometheus_url=hosts.prometheus_url, urls=tuple(urls))
        # Same image on the same hosts: the same version, nothing downstream becomes stale.
        version = stable_hash({"image": image_ref, "url": url, "model": api.model_version,
                               **({"urls": urls} if len(urls) > 1 else {})})
        return ApiResult(api, version, answer, seconds, details={
            "image": image_ref, "image_source": "archive" if archive else "registry", "changed": changed,
            "per_host": dg.MetadataValue.json(per_host), "ansible_seconds": ansible_seconds,
            **({"api_urls": dg.MetadataValue.json(urls)} if len(urls) > 1 else {}),
        })

    def before_hosts_removed(self, outputs: dict, instance_ids: list[str], log) -> str:
        """The leaving hosts drained (ansible_roles/api_drain.yml): each leaving node drained,
        the head's lower target applied (Serve stops the draining replicas first, gracefully),
        then each leaving container stopped. A
        drain that fails (a host already unreachable) is reported and the removal goes on: it
        then costs what it cost without the drain, the leaving node's requests in flight."""
        inventory = outputs.get("ansible_inventory") or {}
        leaving = [name for name, host in inventory_hosts(inventory).items() if host.get("instance_id") in instance_ids]
        if not leaving:
            return f"not drained: no host of the inventory has the instance IDs {instance_ids}"
        started = time.monotonic()
        try:
            self.ansible.run_playbook(inventory, "api_drain.yml", extra_vars={"api_leaving": leaving}, log=log.info)
        except AnsibleError as exc:
            log.warning(f"draining {leaving} failed; removing them anyway (their requests in flight may fail): {exc}")
            return f"drain of {leaving} failed after {time.monotonic() - started:.1f} s: {str(exc)[:300]}"
        outcome = f"drained {leaving} in {time.monotonic() - started:.1f} s"
        log.info(f"{outcome}: their replicas stopped gracefully, the hosts that stay kept theirs")
        return outcome

    def _role_vars(self, image_ref: str, archive: str | None, version: str,
                   runtime_archive: str | None = None) -> dict[str, Any]:
        repository, _, tag = image_ref.rpartition(":")
        if not repository or "/" in tag:
            raise dg.Failure(description=f"the image reference must be repository:tag, got {image_ref!r}")
        extra_vars = {
            "api_image_repository": repository, "api_image_tag": tag, "api_image_source": "archive" if archive else "pull",
            "api_model_version": str(version), "api_ready_timeout": self.ready_timeout_s,
        }
        if archive:
            extra_vars["api_image_archive"] = str(archive)
        if archive and runtime_archive:  # the archive holds only the layers above the runtime
            runtime = archive_image_name(runtime_archive)
            if runtime is None:
                raise dg.Failure(description=f"the runtime archive {runtime_archive} is missing or unreadable: "
                                             "materialize container_image again to save it")
            extra_vars.update(api_runtime_image=runtime, api_runtime_archive=str(runtime_archive))
        return extra_vars


def archive_image_name(archive: str) -> str | None:
    """The repository:tag a `docker load` of this archive gives (its manifest's RepoTags):
    Podman saves short names as localhost/NAME:TAG, and the host's Docker keeps that name."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            manifest = json.load(member) if member else []
    except (OSError, KeyError, tarfile.TarError, ValueError):
        return None
    tags = [t for entry in manifest for t in (entry.get("RepoTags") or [])]
    return tags[0] if tags else None


def _first_key(key_file: str | None) -> str | None:
    if not key_file:
        return None
    from mlops_assets.serving.auth import read_keys

    return read_keys(key_file)[0]
