"""`deployed_hosts`: the target's hosts made ready for the API and its monitoring, and
`deploy_api_to_hosts()`, which the container targets' `deployed_api` calls.

- `aws`, `sim`: Ansible (the `ansible` resource) runs ansible_roles/site.yml's base plays
  (tag `hosts`) on tofu_state's inventory: Docker on every host, Prometheus and Grafana on the
  monitoring host. Metadata: ok/changed/failed per host. When Ansible changed nothing the data
  version stays what it was, so nothing downstream becomes stale.
- `local`: no hosts to configure. The asset records that the hosts are this machine (the
  local Ray instance and Prometheus are set up by deployed_api and dashboards) and runs
  nothing.
"""

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dagster as dg

from mlops_assets.resources import ansible as ansible_module
from mlops_assets.resources.ansible import Ansible, AnsibleError, PlaybookResult, inventory_hosts
from mlops_assets.automation import follows_upstream_data_versions
from mlops_assets.retries import EXTERNAL_STEP_RETRY
from mlops_assets.settings import PROJECT_ROOT
from mlops_assets.versioning import code_version_of, stable_hash

from .metadata import markdown_table

ROLES_DIR = PROJECT_ROOT / "ansible_roles"
HOSTS_TAG = "hosts"  # site.yml's base plays
API_TAG = "api"  # site.yml's API play
ROLES_CODE_VERSION = code_version_of(ansible_module, ROLES_DIR) if ROLES_DIR.is_dir() else code_version_of(ansible_module)


@dataclass(frozen=True)
class DeployedHosts:
    """The `deployed_hosts` value: the inventory the deployment uses and where things answer."""

    target: str
    configured_by: str  # "ansible" or "this machine"
    inventory: dict  # tofu_state's ansible_inventory, without connection settings
    api_addresses: list[str]
    monitoring_addresses: list[str]
    prometheus_url: str | None
    grafana_url: str | None
    per_host: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiOnHosts:
    """What `deploy_api_to_hosts` did: the URL, the version ready there, the smoke answer."""

    url: str
    metrics_url: str
    model_version: str
    image: str
    per_host: dict[str, dict[str, int]]
    changed: int
    smoke_answer: dict[str, Any]
    smoke_seconds: float
    ansible_seconds: float


def _group_addresses(inventory: dict, group: str) -> list[str]:
    children = (inventory.get("all") or {}).get("children") or {}
    hosts = (children.get(group) or {}).get("hosts") or {}
    return [str(v.get("ansible_host") or name) for name, v in hosts.items()]


def _group_var(inventory: dict, group: str, name: str, default: Any) -> Any:
    all_group = inventory.get("all") or {}
    group_vars = ((all_group.get("children") or {}).get(group) or {}).get("vars") or {}
    return group_vars.get(name, (all_group.get("vars") or {}).get(name, default))


def _counts_table(per_host: dict[str, dict[str, int]]) -> str:
    rows = [(host, c["ok"], c["changed"], c["failed"], c["unreachable"], c["skipped"]) for host, c in sorted(per_host.items())]
    return markdown_table(["host", "ok", "changed", "failed", "unreachable", "skipped"], rows)


def _previous_data_version(context: dg.AssetExecutionContext) -> str | None:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    return (event.asset_materialization.tags or {}).get("dagster/data_version")


@dg.asset(
    automation_condition=follows_upstream_data_versions(),
    retry_policy=EXTERNAL_STEP_RETRY,
    code_version=ROLES_CODE_VERSION,
    kinds={"ansible", "docker", "prometheus"},
    group_name="infrastructure",
    description="The target's hosts configured by ansible_roles/site.yml (Docker everywhere, Prometheus and "
    "Grafana on the monitoring host), or this machine in the local target.",
)
def deployed_hosts(context: dg.AssetExecutionContext, ansible: Ansible, tofu_state: dict) -> dg.Output[DeployedHosts]:
    # Between "the machines exist" (tofu_state) and "the API runs there" (deployed_api): the
    # engine and the monitoring stack, which do not change with each model.
    inventory = tofu_state.get("ansible_inventory") or {}
    monitoring = _group_addresses(inventory, "monitoring")
    prometheus_port = _group_var(inventory, "monitoring", "prometheus_port", 9090)
    grafana_port = _group_var(inventory, "monitoring", "grafana_port", 3000)
    if not ansible.enabled:
        value = DeployedHosts(
            target="local", configured_by="this machine", inventory=inventory,
            api_addresses=_group_addresses(inventory, "api"), monitoring_addresses=monitoring,
            prometheus_url=f"http://{monitoring[0]}:{prometheus_port}" if monitoring else None, grafana_url=None,
        )
        note = ("local target: the hosts are this machine and Ansible did not run. deployed_api starts the "
                "API on the local Ray instance and dashboards the local Prometheus.")
        context.log.info(note)
        return dg.Output(value, data_version=dg.DataVersion("this-machine/" + stable_hash(inventory)),
                         metadata={"configured_by": "this machine", "note": note})

    try:
        result = ansible.run_playbook(inventory, "site.yml", tags=[HOSTS_TAG], log=context.log.info)
    except AnsibleError as exc:
        raise dg.Failure(description=str(exc),
                         metadata=_result_metadata(exc.result) if exc.result else None) from None
    value = DeployedHosts(
        target=getattr(ansible, "target", "") or "hosts", configured_by="ansible", inventory=inventory,
        api_addresses=_group_addresses(inventory, "api"), monitoring_addresses=monitoring,
        prometheus_url=f"http://{monitoring[0]}:{prometheus_port}" if monitoring else None,
        grafana_url=f"http://{monitoring[0]}:{grafana_port}" if monitoring else None,
        per_host=result.per_host,
    )
    # Ansible changed nothing: the hosts are as they were, and so is the data version.
    previous = _previous_data_version(context) if result.changed == 0 else None
    version = previous or stable_hash({"inventory": inventory, "roles": ROLES_CODE_VERSION,
                                        "run": context.run_id if result.changed else None})
    metadata = {
        **_result_metadata(result),
        "data_version_kept": previous is not None,
        "prometheus_url": value.prometheus_url or "",
        "grafana_url": value.grafana_url or "",
    }
    return dg.Output(value, data_version=dg.DataVersion(version), metadata=metadata)


def _result_metadata(result: PlaybookResult) -> dict[str, Any]:
    return {
        "hosts": dg.MetadataValue.md(_counts_table(result.per_host)),
        "per_host": dg.MetadataValue.json(result.per_host),
        "changed": result.changed,
        "failed": sum(c["failed"] + c["unreachable"] for c in result.per_host.values()),
        "ansible_seconds": result.seconds,
        "failures": dg.MetadataValue.json([str(f) for f in result.failures]),
    }


def deploy_api_to_hosts(
    ansible: Ansible,
    hosts: DeployedHosts,
    *,
    image_ref: str,
    model_version: str,
    instances: list[dict],
    image_archive: str | None = None,
    log: Callable[[str], None] = print,
    ready_timeout_s: int = 180,
) -> ApiOnHosts:
    """Ship the image (archive, else pulled from its registry), run the `api` role (container,
    /readyz with the expected version, rollback to the previous image when it never gets
    ready), then send a smoke prediction through the API host's own address.

    Raises AnsibleError (the role's message says whether the previous image was restored) or
    RuntimeError when the smoke prediction fails."""
    repository, _, tag = image_ref.rpartition(":")
    if not repository or "/" in tag:
        raise ValueError(f"image_ref must be repository:tag, got {image_ref!r}")
    if not hosts.api_addresses:
        raise RuntimeError("the inventory has no api host")
    api_port = _group_var(hosts.inventory, "api", "api_port", 8000)
    metrics_port = _group_var(hosts.inventory, "api", "metrics_port", 8080)
    url = f"http://{hosts.api_addresses[0]}:{api_port}"
    metrics_url = f"http://{hosts.api_addresses[0]}:{metrics_port}/metrics"
    # Nothing new to deploy and the API answers ready with that version: Ansible is not run.
    record = Path(ansible.work_dir or ".") / API_RECORD
    wanted = {"image": image_ref, "url": url, "model_version": str(model_version)}
    if _read_json(record) == wanted and _ready_version(url) == str(model_version):
        answer, seconds = smoke_predict(url, instances)
        if str((answer.get("model") or {}).get("version")) == str(model_version):
            log(f"the api host already runs {image_ref} and answers ready with version {model_version}: "
                f"Ansible not run; smoke prediction in {seconds * 1000:.0f} ms: {answer.get('predictions')}")
            return ApiOnHosts(url=url, metrics_url=metrics_url, model_version=str(model_version), image=image_ref,
                              per_host={}, changed=0, smoke_answer=answer, smoke_seconds=round(seconds, 3),
                              ansible_seconds=0.0)
    extra_vars = {
        "api_image_repository": repository,
        "api_image_tag": tag,
        "api_image_source": "archive" if image_archive else "pull",
        "api_model_version": str(model_version),
        "api_ready_timeout": ready_timeout_s,
    }
    if image_archive:
        extra_vars["api_image_archive"] = str(image_archive)
    record.unlink(missing_ok=True)  # from here until the smoke test passes, nothing is known good
    result = ansible.run_playbook(hosts.inventory, "site.yml", tags=[API_TAG], extra_vars=extra_vars, log=log)
    answer, seconds = smoke_predict(url, instances)
    served = str((answer.get("model") or {}).get("version"))
    if served != str(model_version):
        raise RuntimeError(f"smoke prediction through {url} answered model version {served}, expected {model_version}")
    log(f"smoke prediction through {url}/predict in {seconds * 1000:.0f} ms: {answer.get('predictions')}")
    _write_json(record, wanted)
    return ApiOnHosts(
        url=url, metrics_url=metrics_url, model_version=str(model_version),
        image=image_ref, per_host=result.per_host, changed=result.changed, smoke_answer=answer,
        smoke_seconds=round(seconds, 3), ansible_seconds=result.seconds,
    )


API_RECORD = "api-deployed.json"  # in the ansible work_dir: the last deployment that passed its smoke test


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(value, sort_keys=True))
    partial.replace(path)


def _ready_version(url: str, timeout_s: float = 5) -> str | None:
    """The model version the API at `url` reports ready, or None when it is not ready."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout_s) as response:
            return str(json.loads(response.read())["model"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def smoke_predict(url: str, instances: list[dict], timeout_s: float = 30) -> tuple[dict, float]:
    """POST instances to url/predict; the answer and the seconds it took. Raises RuntimeError
    with the API's own error when it does not answer 200."""
    body = json.dumps({"instances": instances}).encode()
    request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"smoke prediction through {url}/predict failed: HTTP {exc.code} {exc.read()[:500]!r}") from None
    except OSError as exc:
        raise RuntimeError(f"smoke prediction through {url}/predict failed: {exc}") from None
    return answer, time.monotonic() - started


def hosts_of(inventory: dict) -> list[str]:
    """Every host name of an inventory (for messages and checks)."""
    return sorted(inventory_hosts(inventory))
