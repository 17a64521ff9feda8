"""`tofu_state`: the hosts of the target, and the `destroy_infrastructure` job.

What each target does (the `infrastructure` resource chosen in targets.py):
- `local`: no cloud. Nothing is provisioned and OpenTofu does not run; the asset records that
  the API and monitoring hosts are this machine (127.0.0.1), and says so in its metadata.
- `aws`: OpenTofu applies infra_tf/ with the user's AWS credentials and variables.
- `sim`: OpenTofu applies infra_tf/ to an EC2 emulator on 127.0.0.1 through the AWS provider
  test double (offline rehearsal of `aws`).
"""


import json
import time

import dagster as dg
from pydantic import Field

from mlops_assets.freshness import rebuild_condition
from mlops_assets.metadata import markdown_table
from mlops_assets.resources import opentofu as opentofu_module
from mlops_assets.resources.api_deployer import ApiDeployer
from mlops_assets.resources.opentofu import Infrastructure, OpenTofuError, ProvisionResult, ReplacementRefused
from mlops_assets.settings import PROJECT_ROOT
from mlops_assets.retries import EXTERNAL_STEP_RETRY
from mlops_assets.versioning import code_version_of, stable_hash


INFRA_DIR = PROJECT_ROOT / "infra_tf"


def _infra_code_version() -> str:
    # The module's own files (examples/ are documentation) and the code that runs them.
    files = sorted(p for p in INFRA_DIR.glob("*.tf")) if INFRA_DIR.exists() else []
    return code_version_of(opentofu_module, *files)


def tofu_state_for(var_file: str | None, environ) -> dg.AssetsDefinition:
    """`tofu_state` whose code version also names the user's variables (opentofu.py's
    user_variables_fingerprint): TF_VAR_api_instance_count=3 and `make run` applies it."""
    fingerprint = opentofu_module.user_variables_fingerprint(var_file, environ)
    if fingerprint is None:
        return tofu_state
    return tofu_state.map_asset_specs(
        lambda spec: spec.replace_attributes(code_version=f"{spec.code_version}+variables-{fingerprint}"))


def _addresses(outputs: dict) -> list[tuple[str, str | None, str | None]]:
    """One row per host: every API host (`api_hosts`, the first the Ray head), then monitoring."""
    api_hosts = outputs.get("api_hosts") or [{"name": "api", "public_ip": outputs.get("api_public_ip"),
                                              "private_ip": outputs.get("api_private_ip")}]
    rows = [(f"{host['name']} ({host['ray_role']})" if len(api_hosts) > 1 else host["name"], host.get("public_ip"),
             host.get("private_ip")) for host in api_hosts]
    return rows + [("monitoring", outputs.get("monitoring_public_ip"), outputs.get("monitoring_private_ip"))]


def _metadata(result: ProvisionResult, total_seconds: float) -> dict:
    outputs = result.outputs
    metadata: dict = {
        "target": result.target,
        "applied": result.applied,
        "engine": result.engine,
        "addresses": dg.MetadataValue.md(markdown_table(["host", "public address", "private address"], _addresses(outputs))),
        "api_address": outputs.get("api_public_ip") or outputs.get("api_private_ip"),
        "api_host_count": len(outputs.get("api_hosts") or [None]),
        **({"load_balancer": outputs["load_balancer_dns_name"]} if outputs.get("load_balancer_dns_name") else {}),
        "monitoring_address": outputs.get("monitoring_public_ip") or outputs.get("monitoring_private_ip"),
        "security_group_ids": dg.MetadataValue.json(outputs.get("security_group_ids") or {}),
        "ansible_inventory": dg.MetadataValue.json(outputs.get("ansible_inventory") or {}),
        "timings (s)": dg.MetadataValue.json({**result.timings, "total": round(total_seconds, 2)}),
    }
    if result.plan_summary:
        summary = result.plan_summary
        metadata["plan summary"] = f"{summary['add']} to add, {summary['change']} to change, {summary['remove']} to destroy"
        if result.planned_changes:
            metadata["planned changes"] = dg.MetadataValue.md("\n".join(f"- `{c}`" for c in result.planned_changes))
    else:
        metadata["plan summary"] = "OpenTofu did not run"
    if result.note:
        metadata["note"] = result.note
    for key, value in result.extra.items():
        metadata[key] = dg.MetadataValue.json(value) if isinstance(value, (dict, list)) else value
    return metadata


class TofuStateConfig(dg.Config):
    confirm_replacements: list[str] = Field(
        default_factory=list,
        description="Resource addresses (e.g. aws_instance.api[1], aws_instance.monitoring; aws_instance.api alone "
        "confirms every API host) the plan may destroy or replace in this run. "
        "A plan that destroys or replaces anything not listed is refused and nothing is applied.",
    )


@dg.asset(
    automation_condition=rebuild_condition(),
    retry_policy=EXTERNAL_STEP_RETRY,
    code_version=_infra_code_version(),
    kinds={"opentofu", "aws"},
    group_name="infrastructure",
    description="The target's hosts: infra_tf/ applied by OpenTofu (aws, sim), or this machine (local). "
    "Its value is OpenTofu's outputs, including an Ansible inventory.",
)
def tofu_state(context: dg.AssetExecutionContext, config: TofuStateConfig, infrastructure: Infrastructure,
               api_deployer: ApiDeployer) -> dg.Output[dict]:
    # Everything that deploys to hosts starts from these outputs. Their hash is the data
    # version: a no-change plan keeps it, so downstream deployments stay fresh.
    started = time.monotonic()
    try:
        # API hosts the plan removes are drained before OpenTofu destroys them.
        result = infrastructure.provision(
            context.log.info, confirm_replacements=config.confirm_replacements,
            before_destroy=lambda outputs, ids: api_deployer.before_hosts_removed(outputs, ids, context.log),
        )
    except ReplacementRefused as exc:
        # Not retried: the same plan would be refused again until the run config confirms it.
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    except OpenTofuError as exc:
        raise dg.Failure(description=str(exc)) from None
    outputs = result.outputs
    return dg.Output(
        outputs,
        data_version=dg.DataVersion(stable_hash(outputs)),
        metadata=_metadata(result, time.monotonic() - started),
    )


class DestroyConfig(dg.Config):
    confirm_target: str = Field(
        description="Type the name of the target whose hosts you mean to destroy (aws or sim); nothing happens otherwise."
    )


@dg.op(description="Destroy everything infra_tf/ created for this target (OpenTofu destroy).")
def destroy_hosts(context: dg.OpExecutionContext, config: DestroyConfig, infrastructure: Infrastructure):
    target = infrastructure.target
    if config.confirm_target != target:
        raise dg.Failure(
            description=f"Refusing to destroy: confirm_target is {config.confirm_target!r} but this is the "
            f"{target!r} target. Set confirm_target: {target} in the run config to destroy its hosts."
        )
    try:
        result = infrastructure.destroy(context.log.info)
    except OpenTofuError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(json.dumps(result))
    if result.get("destroyed"):
        # tofu_state no longer describes live hosts: record that, so it shows as changed.
        yield dg.AssetMaterialization(
            asset_key="tofu_state",
            description="Destroyed by the destroy_infrastructure job",
            metadata={"target": target, "destroyed": True, **{k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in result.items() if k != "destroyed"}},
        )
    yield dg.Output(result)


@dg.job(description="Destroy the target's hosts. Needs `confirm_target: <target>` in the op config.")
def destroy_infrastructure():
    destroy_hosts()
