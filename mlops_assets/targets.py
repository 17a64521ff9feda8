"""MLOPS_TARGET -> the resources of that target: the one place where targets differ.

`local` runs everything on this machine; `sim` rehearses `aws` offline; `aws` uses real EC2.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.resources.ansible import Ansible, RehearsalAnsible
from mlops_assets.resources.container_engine import ContainerEngine
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.prometheus_api import PrometheusApi
from mlops_assets.resources.opentofu import OpenTofu, RehearsalOpenTofu, ThisMachine
from mlops_assets.resources.prometheus import LocalPrometheus
from mlops_assets.resources.ray_serve import RayServe
from mlops_assets.settings import PROJECT_ROOT, Settings


def shared_resources(settings: Settings) -> dict[str, Any]:
    return {
        "mlflow": MlflowRegistry(
            tracking_uri=settings.tracking_uri,
            artifact_root=str(settings.artifact_root),
            ui_url=settings.mlflow_ui_url,
        ),
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.io_dir)),
        # What the drift sensor reads; the local target's Prometheus by default.
        "prometheus_api": PrometheusApi(url=settings.prometheus_url),
    }


def infrastructure_for(settings: Settings):
    """`tofu_state`'s hosts: this machine (local), infra_tf/ on EC2 (aws), or on the EC2
    emulator through the provider test double (sim). OpenTofu's working copy and local state
    live in MLOPS_HOME/tofu/<target>; aws variables come from MLOPS_HOME/aws.tfvars (or
    TF_VAR_* variables)."""
    if settings.target == "local":
        ports = settings.local_ports
        return ThisMachine(api_port=ports["api"], metrics_port=ports["metrics"], prometheus_port=ports["prometheus"])
    common = {"module_dir": str(PROJECT_ROOT / "infra_tf"), "work_dir": str(settings.home / "tofu" / settings.target)}
    if settings.target == "sim":
        return RehearsalOpenTofu(**common, rehearsal_dir=str(settings.home / "rehearsal"), project_root=str(PROJECT_ROOT))
    return OpenTofu(**common, target="aws", var_file=str(settings.home / "aws.tfvars"))


def ansible_for(settings: Settings) -> Ansible:
    """deployed_hosts' and deployed_api's configuration tool: none in `local` (the hosts are
    this machine); ansible_roles/ over SSH in `aws` (key MLOPS_SSH_PRIVATE_KEY, known_hosts in
    MLOPS_HOME, accept-new for fresh instances) and `sim` (the rehearsal's key, local images).
    Grafana's admin password comes from MLOPS_GRAFANA_ADMIN_PASSWORD (generated once for sim)."""
    if settings.target == "local":
        return Ansible(enabled=False, target="local")
    import os

    common = {
        "playbook_dir": str(PROJECT_ROOT / "ansible_roles"),
        "work_dir": str(settings.home / "ansible" / settings.target),
        "known_hosts_file": str(settings.home / "ansible" / settings.target / "known_hosts"),
        "host_key_checking": "accept-new",
        "secret_extra_vars_env": {"grafana_admin_password": "MLOPS_GRAFANA_ADMIN_PASSWORD"},
        # The rules and dashboards the `dashboards` asset renders for these hosts (its default
        # out_dir): deployed_hosts and dashboards provision the same files, so a second run
        # changes nothing. Before the first `dashboards` run the folders are empty.
        "extra_vars": {
            "prometheus_rule_files_dir": str(settings.home / "monitoring" / "prometheus" / "rules"),
            "grafana_dashboards_src_dir": str(settings.home / "monitoring" / "dashboards"),
        },
    }
    if settings.target == "sim":
        # The hosts: test hosts (namespaces, own Debian root, sshd) brought up at the emulator's
        # instances' addresses before each Ansible run, from mlops_assets_tests/rehearsal/.
        return RehearsalAnsible(
            **common, private_key_file=str(settings.home / "rehearsal" / "ssh" / "id_ed25519"),
            generated_secrets_dir=str(settings.home / "rehearsal" / "secrets"),
            project_root=str(PROJECT_ROOT), images_dir=str(settings.home / "rehearsal" / "images"),
            hosts_state_file=str(settings.home / "rehearsal" / "hosts.json"),
        )
    return Ansible(**common, target="aws", private_key_file=os.environ.get("MLOPS_SSH_PRIVATE_KEY") or None)


def resources_for(settings: Settings) -> dict[str, Any]:
    resources = shared_resources(settings)
    # Later stages add their per-target resources here (container engine, OpenTofu, Ansible).
    resources["infrastructure"] = infrastructure_for(settings)
    # Configures the hosts tofu_state describes (deployed_hosts, and deployed_api in container targets).
    resources["ansible"] = ansible_for(settings)
    # The API image: built wherever an engine answers; the local target can do without it
    # (a labelled skip), sim saves an archive for its registry-less hosts, aws pushes to
    # MLOPS_IMAGE_REGISTRY (or saves an archive when none is set).
    save_archive = settings.target == "sim" or (settings.target == "aws" and not settings.image_registry)
    resources["container_engine"] = ContainerEngine(
        required=settings.target != "local",
        save_archive=save_archive,
        registry=settings.image_registry if settings.target == "aws" else None,
        # An archive for the hosts' Docker carries a qualified name: a short one is saved by
        # Podman as docker.io/library/NAME, which Docker loads as NAME and Ansible's
        # docker_image then refuses as a different image.
        **({"repository": "localhost/mlops-api"} if save_archive else {}),
    )
    # The prediction API: a local Ray instance on loopback (API :8000, metrics :8080, or where
    # MLOPS_LOCAL_PORTS puts them); the container targets replace it with the image on the hosts.
    ports = settings.local_ports
    resources["ray_serve"] = RayServe(
        state_dir=str(settings.home / "serving"),
        api_port=ports["api"],
        metrics_port=ports["metrics"],
        gcs_port=ports["ray_gcs"],
        client_port=ports["ray_client"],
        haproxy_metrics_port=ports["haproxy_metrics"],
        haproxy_stats_port=ports["haproxy_stats"],
        fallback_proxy_port=ports["serve_fallback"],
        replica_port_min=ports["replicas"][0],
        replica_port_max=ports["replicas"][1],
    )
    # Prometheus on 127.0.0.1:9090 with the `dashboards` asset's rules (local target); the
    # container targets only check the files here, the Ansible roles run them on a host.
    resources["prometheus"] = LocalPrometheus(
        state_dir=str(settings.home / "prometheus"),
        serve=settings.target == "local",
        port=ports["prometheus"],
        node_exporter_port=ports["node_exporter"],
    )
    return resources
