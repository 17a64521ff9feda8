"""`deployed_hosts`: the target's hosts made ready for the API and its monitoring.

The `host_configurator` resource does the work (resources/hosts.py): nothing in `local` (the
hosts are this machine), ansible_roles/site.yml's base plays over SSH in `aws` and `sim`
(Docker and node_exporter everywhere; Prometheus, Alertmanager, the Pushgateway and Grafana on
the monitoring host).
"""

import dagster as dg

from mlops_assets.freshness import rebuild_condition
from mlops_assets.metadata import previous_materialization
from mlops_assets.resources import ansible as ansible_module
from mlops_assets.resources import hosts as hosts_module
from mlops_assets.resources.hosts import DeployedHosts, HostConfigurator
from mlops_assets.retries import EXTERNAL_STEP_RETRY
from mlops_assets.settings import PROJECT_ROOT
from mlops_assets.versioning import code_version_of

ROLES_CODE_VERSION = code_version_of(ansible_module, hosts_module, PROJECT_ROOT / "ansible_roles")


@dg.asset(
    automation_condition=rebuild_condition(),
    retry_policy=EXTERNAL_STEP_RETRY,
    code_version=ROLES_CODE_VERSION,
    kinds={"ansible", "docker", "prometheus"},
    group_name="infrastructure",
    description="The target's hosts configured by ansible_roles/site.yml (Docker everywhere, Prometheus and "
    "Grafana on the monitoring host), or this machine in the local target.",
)
def deployed_hosts(
    context: dg.AssetExecutionContext, host_configurator: HostConfigurator, tofu_state: dict
) -> dg.Output[DeployedHosts]:
    # Between "the machines exist" (tofu_state) and "the API runs there" (deployed_api): the
    # engine and the monitoring stack, which do not change with each model.
    result = host_configurator.configure(
        tofu_state.get("ansible_inventory") or {},
        previous_data_version=previous_materialization(context).data_version,
        run_id=context.op_execution_context.run_id, code_version=ROLES_CODE_VERSION, log=context.log,
    )
    return dg.Output(result.hosts, data_version=dg.DataVersion(result.data_version), metadata=result.metadata)
