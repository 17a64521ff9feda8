"""The host configurator: makes the target's hosts ready for the API and its monitoring.

One class per kind of target, chosen in targets.py; `deployed_hosts` calls `configure()`
without knowing which:

- `ThisMachineHosts` (`local`): the hosts are this machine; nothing runs. The local Ray
  instance and Prometheus are started by the API deployer and the monitoring provisioner.
- `AnsibleHosts` (`aws`, `sim`): ansible_roles/site.yml's base plays (tag `hosts`) over SSH:
  Docker and node_exporter everywhere; Prometheus, Alertmanager, the Pushgateway and Grafana on
  the monitoring host. When Ansible changed nothing, the previous data version is kept, so nothing
  downstream becomes stale. The monitoring host's Pushgateway is recorded (`pushgateway_record`)
  for the `pipeline_metrics` resource, which pushes there from then on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mlops_assets.metadata import markdown_table
from mlops_assets.resources.ansible import Ansible, AnsibleError, PlaybookResult
from mlops_assets.state import StateFile
from mlops_assets.versioning import stable_hash

HOSTS_TAG = "hosts"  # site.yml's base plays
API_TAG = "api"  # site.yml's API play
MONITORING_CONFIG_TAG = "monitoring-config"  # the monitoring roles' files and containers, not their images


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
class HostsResult:
    """What `configure` did: the value, its data version and the metadata to show."""

    hosts: DeployedHosts
    data_version: str
    metadata: dict[str, Any]


def group_addresses(inventory: dict, group: str) -> list[str]:
    children = (inventory.get("all") or {}).get("children") or {}
    hosts = (children.get(group) or {}).get("hosts") or {}
    return [str(v.get("ansible_host") or name) for name, v in hosts.items()]


def group_var(inventory: dict, group: str, name: str, default: Any) -> Any:
    all_group = inventory.get("all") or {}
    group_vars = ((all_group.get("children") or {}).get(group) or {}).get("vars") or {}
    return group_vars.get(name, (all_group.get("vars") or {}).get(name, default))


def counts_table(per_host: dict[str, dict[str, int]]) -> str:
    rows = [(host, c["ok"], c["changed"], c["failed"], c["unreachable"], c["skipped"]) for host, c in sorted(per_host.items())]
    return markdown_table(["host", "ok", "changed", "failed", "unreachable", "skipped"], rows)


def playbook_metadata(result: PlaybookResult) -> dict[str, Any]:
    return {
        "hosts": dg.MetadataValue.md(counts_table(result.per_host)),
        "per_host": dg.MetadataValue.json(result.per_host),
        "changed": result.changed,
        "failed": sum(c["failed"] + c["unreachable"] for c in result.per_host.values()),
        "ansible_seconds": result.seconds,
        "failures": dg.MetadataValue.json([str(f) for f in result.failures]),
    }


class HostConfigurator(dg.ConfigurableResource):
    """Makes tofu_state's hosts ready (see the module docstring)."""

    def configure(self, inventory: dict, *, previous_data_version: str | None, run_id: str, code_version: str,
                  log) -> HostsResult:  # pragma: no cover - abstract
        raise NotImplementedError


class ThisMachineHosts(HostConfigurator):
    """`local`: the hosts are this machine; Ansible does not run."""

    def configure(self, inventory: dict, *, previous_data_version: str | None, run_id: str, code_version: str,
                  log) -> HostsResult:
        monitoring = group_addresses(inventory, "monitoring")
        port = group_var(inventory, "monitoring", "prometheus_port", 9090)
        hosts = DeployedHosts(
            target="local", configured_by="this machine", inventory=inventory,
            api_addresses=group_addresses(inventory, "api"), monitoring_addresses=monitoring,
            prometheus_url=f"http://{monitoring[0]}:{port}" if monitoring else None, grafana_url=None,
        )
        note = ("local target: the hosts are this machine and Ansible did not run. deployed_api starts the "
                "API on the local Ray instance and dashboards the local Prometheus.")
        log.info(note)
        return HostsResult(hosts, "this-machine/" + stable_hash(inventory), {"configured_by": "this machine", "note": note})


class AnsibleHosts(HostConfigurator):
    """`aws`, `sim`: site.yml's base plays (tag `hosts`) through the `ansible` resource."""

    ansible: Ansible
    # state.RECORDS["pushgateway"]: where the pipeline pushes once the monitoring host runs its
    # Pushgateway ("" records nothing).
    pushgateway_record: str = ""

    def configure(self, inventory: dict, *, previous_data_version: str | None, run_id: str, code_version: str,
                  log) -> HostsResult:
        try:
            result = self.ansible.run_playbook(inventory, "site.yml", tags=[HOSTS_TAG], log=log.info)
        except AnsibleError as exc:
            raise dg.Failure(description=str(exc), metadata=playbook_metadata(exc.result) if exc.result else None) from None
        monitoring = group_addresses(inventory, "monitoring")
        prometheus_port = group_var(inventory, "monitoring", "prometheus_port", 9090)
        grafana_port = group_var(inventory, "monitoring", "grafana_port", 3000)
        hosts = DeployedHosts(
            target=self.ansible.target, configured_by="ansible", inventory=inventory,
            api_addresses=group_addresses(inventory, "api"), monitoring_addresses=monitoring,
            prometheus_url=f"http://{monitoring[0]}:{prometheus_port}" if monitoring else None,
            grafana_url=f"http://{monitoring[0]}:{grafana_port}" if monitoring else None,
            per_host=result.per_host,
        )
        if self.pushgateway_record and monitoring:
            port = group_var(inventory, "monitoring", "pushgateway_port", 9091)
            StateFile(self.pushgateway_record).write({"url": f"http://{monitoring[0]}:{port}"})
        # Ansible changed nothing: the hosts are as they were, and so is the data version.
        kept = previous_data_version if result.changed == 0 else None
        version = kept or stable_hash({"inventory": inventory, "roles": code_version,
                                       "run": run_id if result.changed else None})
        metadata = {
            **playbook_metadata(result),
            "data_version_kept": kept is not None,
            "prometheus_url": hosts.prometheus_url or "",
            "grafana_url": hosts.grafana_url or "",
        }
        return HostsResult(hosts, version, metadata)
