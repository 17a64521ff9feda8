"""MLOPS_TARGET -> the resources of that target: the one place where targets differ.

Each role has one resource key and one class per kind of target (the pattern of Dagster's
project_fully_featured); assets ask the role, never the target:

| key | local | sim | aws |
| --- | --- | --- | --- |
| `infrastructure` | ThisMachine | RehearsalOpenTofu (EC2 emulator) | OpenTofu |
| `host_configurator` | ThisMachineHosts | AnsibleHosts(RehearsalAnsible) | AnsibleHosts(Ansible) |
| `container_engine` | ContainerEngine (optional) | ContainerEngine (archive) | ContainerEngine (push or archive) |
| `api_deployer` | RayServeOnThisMachine | ImageOnApiHosts | ImageOnApiHosts |
| `monitoring` | LocalMonitoring (+ Alertmanager on loopback) | MonitoringHost (Grafana rendered only) | MonitoringHost |
| `pipeline_metrics` | LocalPipelineMetrics | PipelineMetrics (the monitoring host's Pushgateway) | PipelineMetrics (same) |
| `tracking_store` | ConfiguredStore | ServerOnMonitoringHost | ServerOnMonitoringHost |

In `sim` and `aws` an MLFLOW_TRACKING_URI of the user's (a team's existing store) means
ConfiguredStore there too: nothing is deployed and nothing falls back to a local store.

`mlflow`, `data_source`, `io_manager` and `prometheus_api` are the same everywhere.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlops_assets.freshness import schedule_period_s
from mlops_assets.ml import data as ml_data
from mlops_assets.resources.ansible import Ansible, RehearsalAnsible
from mlops_assets.resources.api_deployer import ImageOnApiHosts, RayServeOnThisMachine
from mlops_assets.resources.container_engine import ContainerEngine
from mlops_assets.resources.data_source import DataSource
from mlops_assets.resources.hosts import AnsibleHosts, ThisMachineHosts
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.monitoring import LocalMonitoring, MonitoringHost
from mlops_assets.resources.pipeline_metrics import (
    PUSHGATEWAY_PASSWORD_ENV,
    PUSHGATEWAY_SECRET,
    LocalPipelineMetrics,
    PipelineMetrics,
)
from mlops_assets.resources.opentofu import OpenTofu, RehearsalOpenTofu, ThisMachine
from mlops_assets.resources.prometheus import LocalPrometheus
from mlops_assets.resources.prometheus_api import PrometheusApi
from mlops_assets.resources.ray_serve import RayServe
from mlops_assets.resources.tracking import ConfiguredStore, ServerOnMonitoringHost
from mlops_assets.settings import PROJECT_ROOT, Settings
from mlops_assets.state import RECORDS

# The aws target's OpenTofu variables, in MLOPS_HOME (infra_tf/examples/ shows one).
AWS_VAR_FILE = "aws.tfvars"


def resources_for(settings: Settings) -> dict[str, Any]:
    home, target, ports = settings.home, settings.target, settings.local_ports
    monitoring_common = {
        "out_dir": str(home / "monitoring"),
        "promtool_record": str(RECORDS["promtool_passed"].under(home).path),
        # Resolved by Dagster at run time and never shown in its UI (it may carry a token).
        "alert_webhook_url": dg.EnvVar("MLOPS_ALERT_WEBHOOK_URL") if settings.alert_webhook_url else None,
        "alert_smtp": settings.alert_smtp,
        "alert_timings": settings.alert_timings,
        "scrape_interval": settings.scrape_interval,
    }
    # sim/aws without MLFLOW_TRACKING_URI: the server the tracking_server asset deploys on the
    # monitoring host, read from its record at run time (never this machine's sqlite store).
    server_on_host = target != "local" and not settings.tracking_uri_configured
    tracking_record = str(RECORDS["tracking_server"].under(home, target).path)
    mlflow = MlflowRegistry(tracking_uri=settings.tracking_uri, artifact_root=str(settings.artifact_root),
                            ui_url=settings.mlflow_ui_url, model_name=settings.model_name,
                            server_record=tracking_record if server_on_host else None)
    resources: dict[str, Any] = {
        "mlflow": mlflow,
        "tracking_store": ConfiguredStore(mlflow=mlflow),
        "data_source": DataSource(location=settings.dataset or ml_data.DEFAULT_SOURCE,
                                  target_column=settings.target_column or ml_data.DEFAULT_TARGET),
        "io_manager": dg.FilesystemIOManager(base_dir=str(settings.io_dir)),
        # What the drift sensor reads; the local target's Prometheus by default. Elsewhere
        # (MLOPS_PROMETHEUS_URL at the monitoring host) with the monitoring host's basic auth:
        # the password from MLOPS_PROMETHEUS_PASSWORD, else the rehearsal's generated one.
        "prometheus_api": PrometheusApi(url=settings.prometheus_url) if target == "local" else PrometheusApi(
            url=settings.prometheus_url, username="admin", password_env="MLOPS_PROMETHEUS_PASSWORD",
            password_file=str(home / "rehearsal" / "secrets" / "prometheus_web_password") if target == "sim" else None),
        "container_engine": container_engine_for(settings),
    }
    pipeline_metrics = {"target": target, "retraining_period_s": schedule_period_s(settings.retrain_cron)}
    if target == "local":
        prometheus = LocalPrometheus(state_dir=str(home / "prometheus"), port=ports["prometheus"],
                                     node_exporter_port=ports["node_exporter"], pushgateway_port=ports["pushgateway"],
                                     alertmanager_port=ports["alertmanager"])
        resources["infrastructure"] = ThisMachine(api_port=ports["api"], metrics_port=ports["metrics"],
                                                  prometheus_port=ports["prometheus"])
        resources["host_configurator"] = ThisMachineHosts()
        resources["api_deployer"] = RayServeOnThisMachine(ray_serve=local_ray_serve(settings),
                                                          tracking_uri=settings.tracking_uri)
        resources["monitoring"] = LocalMonitoring(**monitoring_common, prometheus=prometheus)
        # The same Prometheus resource: its Pushgateway, on loopback.
        resources["pipeline_metrics"] = LocalPipelineMetrics(**pipeline_metrics, prometheus=prometheus)
        return resources
    tofu = {"module_dir": str(PROJECT_ROOT / "infra_tf"), "work_dir": str(home / "tofu" / target)}
    ansible = ansible_for(settings)
    resources["infrastructure"] = (
        RehearsalOpenTofu(**tofu, rehearsal_dir=str(home / "rehearsal")) if target == "sim"
        else OpenTofu(**tofu, target="aws", var_file=str(home / AWS_VAR_FILE))
    )
    if server_on_host:
        resources["tracking_store"] = ServerOnMonitoringHost(
            ansible=ansible, mlflow=mlflow, container_engine=resources["container_engine"], record_file=tracking_record,
            # sim: the shared cache, named by image id (1.5 GB saved once, not per MLOPS_HOME).
            images_dir=None if target == "sim" else str(home / "images"),
            secrets_dir=str(home / "rehearsal" / "secrets") if target == "sim" else str(home / "secrets" / target),
            emulator_dir=str(home / "rehearsal" / "emulator") if target == "sim" else None)
    gateway_record = str(RECORDS["pushgateway"].under(home, target).path)
    resources["host_configurator"] = AnsibleHosts(ansible=ansible, pushgateway_record=gateway_record)
    resources["api_deployer"] = ImageOnApiHosts(ansible=ansible,
                                                record_file=str(RECORDS["api_deployed"].under(home, target).path),
                                                api_key_file=str(settings.api_key_file) if settings.api_key_file else None)
    resources["monitoring"] = MonitoringHost(**monitoring_common, ansible=ansible, grafana_render_only=target == "sim")
    # MLOPS_PUSHGATEWAY_URL, else the monitoring host's gateway once deployed_hosts recorded it.
    resources["pipeline_metrics"] = PipelineMetrics(
        **pipeline_metrics, gateway_url=settings.pushgateway_url, gateway_record=gateway_record, username="admin",
        password_env=PUSHGATEWAY_PASSWORD_ENV,
        password_file=str(home / "rehearsal" / "secrets" / PUSHGATEWAY_SECRET) if target == "sim" else None)
    return resources


def local_ray_serve(settings: Settings) -> RayServe:
    """The local Ray instance on loopback: API :8000, metrics :8080, or where MLOPS_LOCAL_PORTS puts them."""
    ports, timeouts = settings.local_ports, settings.api_timeouts
    return RayServe(
        state_dir=str(settings.home / "serving"), api_port=ports["api"], metrics_port=ports["metrics"],
        gcs_port=ports["ray_gcs"], client_port=ports["ray_client"], haproxy_metrics_port=ports["haproxy_metrics"],
        haproxy_stats_port=ports["haproxy_stats"], fallback_proxy_port=ports["serve_fallback"],
        replica_port_min=ports["replicas"][0], replica_port_max=ports["replicas"][1],
        timeout_client_s=timeouts["client"], timeout_server_s=timeouts["server"], timeout_connect_s=timeouts["connect"],
        timeout_http_request_s=timeouts["http_request"], request_timeout_s=timeouts["request"],
        api_key_file=str(settings.api_key_file) if settings.api_key_file else None,
        # Resolved by Dagster at run time and never shown in its UI (settings has read it already).
        api_keys=dg.EnvVar("MLOPS_API_KEYS") if settings.api_keys else None,
        access_log=settings.api_access_log,
    )


def container_engine_for(settings: Settings) -> ContainerEngine:
    """The API image: built wherever an engine answers; `local` can do without it (a labelled
    skip), `sim` saves an archive for its registry-less hosts, `aws` pushes to
    MLOPS_IMAGE_REGISTRY (or saves an archive when none is set)."""
    save_archive = settings.target == "sim" or (settings.target == "aws" and not settings.image_registry)
    return ContainerEngine(
        required=settings.target != "local",
        save_archive=save_archive,
        images_dir=str(settings.home / "images"),
        registry=settings.image_registry if settings.target == "aws" else None,
        # An archive for the hosts' Docker carries a qualified name: a short one is saved by
        # Podman as docker.io/library/NAME, which Docker loads as NAME and Ansible's
        # docker_image then refuses as a different image.
        **({"repository": "localhost/mlops-api"} if save_archive else {}),
    )


def ansible_for(settings: Settings) -> Ansible:
    """ansible_roles/ over SSH: `aws` with MLOPS_SSH_PRIVATE_KEY (known_hosts in MLOPS_HOME, the
    keys pinned from each instance's console output, checked strictly); `sim` with the rehearsal's key, its local images and its
    namespace hosts. Grafana's admin password comes from MLOPS_GRAFANA_ADMIN_PASSWORD, the
    monitoring host's Prometheus, Alertmanager and Pushgateway basic-auth passwords from
    MLOPS_PROMETHEUS_PASSWORD, MLOPS_ALERTMANAGER_PASSWORD and MLOPS_PUSHGATEWAY_PASSWORD (all
    generated once for sim)."""
    home, target = settings.home, settings.target
    common = {
        "target": target,
        "playbook_dir": str(PROJECT_ROOT / "ansible_roles"),
        "work_dir": str(home / "ansible" / target),
        "known_hosts_file": str(home / "ansible" / target / "known_hosts"),
        # Host keys pinned from each new instance's console output (cloud-init's), checked
        # strictly from the first connection: nothing is trusted on first use.
        "host_key_checking": "strict",
        "host_keys_from_console": True,
        "secret_extra_vars_env": {"grafana_admin_password": "MLOPS_GRAFANA_ADMIN_PASSWORD",
                                  "prometheus_web_password": "MLOPS_PROMETHEUS_PASSWORD",
                                  "alertmanager_web_password": "MLOPS_ALERTMANAGER_PASSWORD",
                                  PUSHGATEWAY_SECRET: PUSHGATEWAY_PASSWORD_ENV,
                                  # The Ray cluster's token and its state store's password (more
                                  # than one API host): generated once.
                                  "api_ray_token": "MLOPS_RAY_AUTH_TOKEN",
                                  "ray_gcs_store_password": "MLOPS_RAY_GCS_STORE_PASSWORD"},
        "machine_secrets_dir": str(home / "secrets" / target),
        # The rules and dashboards the `dashboards` asset renders for these hosts (the
        # monitoring resource's out_dir): deployed_hosts and dashboards provision the same
        # files, so a second run changes nothing. Before the first `dashboards` run the folders are empty.
        "extra_vars": {
            "prometheus_rule_files_dir": str(home / "monitoring" / "prometheus" / "rules"),
            "grafana_dashboards_src_dir": str(home / "monitoring" / "dashboards"),
            # The Alertmanager configuration `dashboards` renders (until then the role's own, no receiver).
            "alertmanager_config_src": str(home / "monitoring" / "alertmanager" / "alertmanager.yml"),
            # The intervals `dashboards` renders with (MLOPS_SCRAPE_INTERVAL): deployed_hosts writes
            # the same prometheus.yml, so neither undoes the other's.
            "prometheus_scrape_interval": settings.scrape_interval,
            "prometheus_evaluation_interval": settings.scrape_interval,
            # aws: Prometheus finds the API hosts by their tags (every API host of a Ray cluster,
            # one added later too); sim: from the inventory (its emulator is out of the hosts' reach).
            **({"prometheus_api_discovery": "ec2"} if target == "aws" else {}),
            # The api role copies the key file to the host and mounts it into the container.
            **({"api_key_file": str(settings.api_key_file)} if settings.api_key_file else {}),
            # The container reads MLOPS_API_ACCESS_LOG (serving/container.py); only set when on,
            # so a default configuration leaves the running container as it is.
            **({"api_env": {"MLOPS_API_ACCESS_LOG": "1"}} if settings.api_access_log else {}),
            # Serve autoscaling of a Ray cluster across API hosts (MLOPS_API_AUTOSCALING).
            **{f"api_autoscaling_{name}": value for name, value in settings.api_autoscaling},
        },
    }
    if target == "sim":
        return RehearsalAnsible(
            **common, private_key_file=str(home / "rehearsal" / "ssh" / "id_ed25519"),
            generated_secrets_dir=str(home / "rehearsal" / "secrets"), images_dir=str(home / "rehearsal" / "images"),
            hosts_state_file=str(RECORDS["rehearsal_hosts"].under(home).path), emulator_dir=str(home / "rehearsal" / "emulator"),
            # The rehearsal hosts print their keys before the first read: no boot to wait for.
            console_keys_timeout_s=30, console_poll_s=1,
        )
    return Ansible(**common, private_key_file=settings.ssh_private_key)
