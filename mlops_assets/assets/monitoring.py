"""`dashboards`: the monitoring of the deployed API as files, checked with promtool and amtool,
and in service: rendered here (monitoring/), then put in service by the `monitoring` resource
(resources/monitoring.py): the local Prometheus and Alertmanager in `local`, Prometheus,
Alertmanager and Grafana on the monitoring host through Ansible in `aws` and `sim`, read back
live either way."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from mlops_assets import monitoring as monitoring_package
from mlops_assets.freshness import LIVE_SERVICE_TAG, rebuild_condition
from mlops_assets.metadata import previous_materialization
from mlops_assets.ml.data import Dataset
from mlops_assets.monitoring import alertmanager_config
from mlops_assets.monitoring import render as render_module
from mlops_assets.monitoring.profile import training_profile
from mlops_assets.monitoring.rules import AlertSettings, alert_names, rule_count, rule_groups
from mlops_assets.resources import monitoring as monitoring_module
from mlops_assets.resources.api_deployer import DeployedApi
from mlops_assets.resources.monitoring import Monitoring, MonitoringProvisioner, Rendered, metrics_target
from mlops_assets.versioning import code_version_of

MONITORING_CODE_VERSION = code_version_of(Path(monitoring_package.__file__).parent, monitoring_module)


class DashboardsConfig(dg.Config):
    out_dir: str | None = Field(default=None, description="Where the rendered tree goes (same layout as "
                                "grafana_dashboards/); default: MLOPS_HOME/monitoring (the monitoring resource's out_dir).")
    availability_slo: float = Field(default=0.995, description="Share of requests not answered with a 5xx.")
    latency_p99_slo_s: float = Field(default=0.25, description="p99 objective of POST /predict, in seconds.")
    scrape_interval: str | None = Field(default=None, description="Prometheus's scrape interval: in the rendered "
                                        "prometheus.yml (local) and given to the prometheus role (monitoring host); "
                                        "default: MLOPS_SCRAPE_INTERVAL, else 15s.")
    evaluation_interval: str | None = Field(default=None, description="How often Prometheus evaluates the rules "
                                            "(same places; same default).")
    targets_up_timeout_s: float = 60.0


@dg.asset(
    automation_condition=rebuild_condition(),
    code_version=MONITORING_CODE_VERSION,
    kinds={"prometheus", "grafana"},
    group_name="monitoring",
    # Runs on every `make run` (cheap when nothing changed): Prometheus may be down while fresh.
    tags={LIVE_SERVICE_TAG: "true"},
    description="Grafana dashboards, Prometheus scrape config and alert rules for the deployed API: "
    "rendered, checked with promtool, and in service (local Prometheus, or the monitoring host).",
)
def dashboards(
    context: dg.AssetExecutionContext, config: DashboardsConfig, monitoring: MonitoringProvisioner,
    deployed_api: DeployedApi, dataset: Dataset,
) -> dg.Output[Monitoring]:
    # What an operator looks at once the API serves: its traffic, errors, latency, and whether
    # predictions still look like the training data (the reference comes from `dataset`).
    # Alertmanager delivers the alerts to the receivers the settings name (none: listed only).
    routing, target_down_for = monitoring.alert_routing()
    alerts = AlertSettings(availability_slo=config.availability_slo, latency_p99_slo_s=config.latency_p99_slo_s,
                           target_down_for=target_down_for)
    profile = training_profile(dataset)
    scrape_interval = config.scrape_interval or monitoring.scrape_interval
    evaluation_interval = config.evaluation_interval or monitoring.scrape_interval
    settings = render_module.RenderSettings(
        api_targets=(metrics_target(deployed_api.metrics_url),), host_targets=monitoring.host_targets(),
        pushgateway_targets=monitoring.pushgateway_targets(),
        alertmanager_targets=monitoring.alertmanager_targets(deployed_api.prometheus_url),
        prometheus_url=monitoring.datasource_url(deployed_api.prometheus_url),
        scrape_interval=scrape_interval, evaluation_interval=evaluation_interval, alerts=alerts,
        routing=routing,
    )
    out = Path(config.out_dir or monitoring.out_dir)
    files = render_module.render_all(profile, settings)
    render_module.write(files, out)
    groups = rule_groups(profile, alerts)
    rendered = Rendered.of(out, render_module.content_hash(files), rule_count(groups), settings.api_targets[0],
                           scrape_interval, evaluation_interval)
    monitoring.check(rendered, context.log)
    result = monitoring.provision(rendered, previous=previous_materialization(context).metadata,
                                  api_prometheus_url=deployed_api.prometheus_url, inventory=deployed_api.inventory,
                                  targets_up_timeout_s=config.targets_up_timeout_s, log=context.log)
    value = Monitoring(str(out), sorted(files), rendered.content_hash, result.prometheus_url, result.targets_up)
    return dg.Output(value, data_version=dg.DataVersion(value.content_hash), metadata={
        "out_dir": dg.MetadataValue.path(str(out)),
        "files": dg.MetadataValue.json(value.files),
        "rule_count": rendered.expected_rules,
        "alerts": ", ".join(sorted(alert_names(groups))),
        "alert_delivery": alertmanager_config.describe(routing),
        "dashboards": ", ".join(p for p in value.files if p.startswith("dashboards/")),
        "prometheus_url": dg.MetadataValue.url(result.prometheus_url) if result.prometheus_url else "not run",
        **result.details,
        "targets_up": dg.MetadataValue.json(result.targets_up),
        "training_class_ratios": dg.MetadataValue.json({k: round(v, 4) for k, v in profile.class_ratios.items()}),
        "content_hash": value.content_hash,
    })
