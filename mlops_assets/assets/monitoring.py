"""`dashboards`: the monitoring of the deployed API as files, checked, and live: in the local
Prometheus (local target), or provisioned by the Ansible `prometheus` and `grafana` roles on the
monitoring host (aws, sim), then read back from that Prometheus (rules loaded, api target up)."""

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
from pydantic import Field

from mlops_assets import monitoring
from mlops_assets import settings as settings_module
from mlops_assets.automation import follows_upstream_data_versions
from mlops_assets.ml.data import Dataset
from mlops_assets.monitoring import render as render_module
from mlops_assets.monitoring.profile import training_profile
from mlops_assets.monitoring.rules import AlertSettings, alert_names, rule_count, rule_groups
from mlops_assets.resources import prometheus as prometheus_module
from mlops_assets.resources.ansible import Ansible, AnsibleError
from mlops_assets.resources.prometheus import LocalPrometheus, PrometheusError
from mlops_assets.versioning import code_version_of

from .deployment import DeployedApi
from .metadata import previous_metadata

_SETTINGS = settings_module.load_settings()
MONITORING_CODE_VERSION = code_version_of(Path(monitoring.__file__).parent, prometheus_module)


class DashboardsConfig(dg.Config):
    out_dir: str = Field(
        default=str(_SETTINGS.home / "monitoring"),
        description="Where the rendered tree goes (same layout as grafana_dashboards/); the local Prometheus reads it.",
    )
    availability_slo: float = Field(default=0.995, description="Share of requests not answered with a 5xx.")
    latency_p99_slo_s: float = Field(default=0.25, description="p99 objective of POST /predict, in seconds.")
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    targets_up_timeout_s: float = 60.0


@dataclass(frozen=True)
class Monitoring:
    """The `dashboards` asset's value: where the rendered files are and what serves them."""

    out_dir: str
    files: list[str]
    content_hash: str
    prometheus_url: str | None
    targets_up: dict[str, bool]


def metrics_target(metrics_url: str) -> str:
    """host:port of the API's metrics endpoint (what Prometheus scrapes)."""
    parsed = urlparse(metrics_url)
    return f"{parsed.hostname}:{parsed.port or 80}"


@dg.asset(
    automation_condition=follows_upstream_data_versions(),
    code_version=MONITORING_CODE_VERSION,
    kinds={"prometheus", "grafana"},
    group_name="monitoring",
    # Runs on every `make run` (cheap when nothing changed): Prometheus may be down while fresh.
    tags={"mlops/always_check": "true"},
    description="Grafana dashboards, Prometheus scrape config and alert rules for the deployed API: "
    "rendered, checked with promtool, and loaded into the local Prometheus (local target).",
)
def dashboards(
    context: dg.AssetExecutionContext,
    config: DashboardsConfig,
    prometheus: LocalPrometheus,
    ansible: Ansible,
    deployed_api: DeployedApi,
    dataset: Dataset,
) -> dg.Output[Monitoring]:
    # What an operator looks at once the API serves: its traffic, errors, latency, and whether
    # predictions still look like the training data (the reference comes from `dataset`).
    alerts = AlertSettings(availability_slo=config.availability_slo, latency_p99_slo_s=config.latency_p99_slo_s)
    settings = render_module.RenderSettings(
        api_targets=(metrics_target(deployed_api.metrics_url),),
        # The local target's node_exporter (this machine is the API host); container targets
        # get theirs from the Ansible roles.
        host_targets=tuple(t for t in [prometheus.node_exporter_target] if t),
        # Grafana's datasource: the monitoring host's Prometheus in container targets.
        prometheus_url=deployed_api.prometheus_url or prometheus.url,
        scrape_interval=config.scrape_interval,
        evaluation_interval=config.evaluation_interval,
        alerts=alerts,
    )
    profile = training_profile(dataset)
    files = render_module.render_all(profile, settings)
    out = Path(config.out_dir)
    render_module.write(files, out)
    config_file = out / render_module.CONFIG_FILE
    content_hash = render_module.content_hash(files)
    # promtool's unit tests take seconds: files that passed them once are not tested again.
    checked = out / ".promtool-passed"
    if not checked.exists() or checked.read_text() != content_hash:
        try:
            prometheus.check_config(config_file)  # also checks every rule file it loads
            prometheus.test_rules(out / render_module.TESTS_FILE)
        except PrometheusError as exc:
            raise dg.Failure(description=f"the rendered monitoring files in {out} failed promtool: {exc}") from None
        checked.write_text(content_hash)
        context.log.info(f"promtool: config, rules and alert unit tests pass ({out})")
    groups = rule_groups(profile, alerts)
    expected_rules = rule_count(groups)
    targets_up: dict[str, bool] = {}
    if prometheus.serve:
        try:
            prometheus.ensure_running(config_file, log=context.log)
            prometheus.wait_until(
                lambda: sum(len(g["rules"]) for g in prometheus.rule_groups()) == expected_rules,
                timeout_s=30,
                what=f"{expected_rules} rules to be loaded",
            )
            targets_up = prometheus.wait_until(
                lambda: (up := prometheus.targets_up()) and all(up.values()) and up,
                timeout_s=config.targets_up_timeout_s,
                what=f"the scrape targets {', '.join((*settings.api_targets, *settings.host_targets))} to be up",
            )
        except PrometheusError as exc:
            raise dg.Failure(description=f"{exc} (Prometheus log: {prometheus.log_file})") from None
        context.log.info(f"Prometheus at {prometheus.url}: {expected_rules} rules loaded, targets up: {targets_up}")
    provisioned: dict = {}
    live = prometheus if prometheus.serve else None
    if ansible.enabled and deployed_api.inventory:  # aws, sim: the roles provision the files
        live, targets_up, provisioned = _provision_on_hosts(
            context, ansible, deployed_api, out, prometheus, expected_rules, config.targets_up_timeout_s, content_hash
        )
    value = Monitoring(
        out_dir=str(out),
        files=sorted(files),
        content_hash=content_hash,
        prometheus_url=live.url if live else None,
        targets_up=targets_up,
    )
    return dg.Output(
        value,
        data_version=dg.DataVersion(value.content_hash),
        metadata={
            "out_dir": dg.MetadataValue.path(str(out)),
            "files": dg.MetadataValue.json(value.files),
            "rule_count": expected_rules,
            "alerts": ", ".join(sorted(alert_names(groups))),
            "dashboards": ", ".join(p for p in value.files if p.startswith("dashboards/")),
            "prometheus_url": dg.MetadataValue.url(live.url) if live else "not run",
            **provisioned,
            "targets_up": dg.MetadataValue.json(targets_up),
            "training_class_ratios": dg.MetadataValue.json({k: round(v, 4) for k, v in profile.class_ratios.items()}),
            "content_hash": value.content_hash,
        },
    )


def _provision_on_hosts(context, ansible: Ansible, deployed_api: DeployedApi, out: Path, prometheus: LocalPrometheus,
                        expected_rules: int, timeout_s: float, content_hash: str):
    """Container targets: site.yml's monitoring plays (tag `hosts`) on the monitoring host with
    the rules and dashboards just rendered (the same folders deployed_hosts passes by default,
    so a run with nothing new changes nothing); then the monitoring host's Prometheus must have
    loaded every rule and scrape the api host's metrics port with success.

    When the last materialization provisioned these very files to this Prometheus, and it
    still has every rule loaded and the api target up, Ansible is not run at all."""
    parsed = urlparse(deployed_api.prometheus_url or "")
    remote = LocalPrometheus(state_dir=prometheus.state_dir, serve=False, host=parsed.hostname or "", port=parsed.port or 9090)
    api_target = metrics_target(deployed_api.metrics_url)
    previous = previous_metadata(context)
    if previous.get("content_hash") == content_hash and previous.get("prometheus_url") == remote.url:
        healthy = _healthy(remote, expected_rules, api_target)
        if healthy:
            context.log.info(f"{remote.url} already runs these files: {expected_rules} rules loaded, targets up "
                             f"{healthy}; Ansible not run")
            return remote, healthy, {
                "provisioned_by": "unchanged: the monitoring host already runs these files (checked live)",
                "changed": 0,
                "grafana": previous.get("grafana", ""),
            }
        context.log.info(f"{remote.url} does not answer with every rule and the api target up: provisioning again")
    try:
        result = ansible.run_playbook(
            deployed_api.inventory, "site.yml", tags=["hosts"], limit="monitoring", log=context.log.info,
            extra_vars={"prometheus_rule_files_dir": str(out / render_module.RULES_DIR),
                        "grafana_dashboards_src_dir": str(out / "dashboards")},
        )
    except AnsibleError as exc:
        raise dg.Failure(description=f"provisioning the monitoring host failed: {exc}") from None
    try:
        remote.wait_until(
            lambda: sum(len(g["rules"]) for g in remote.rule_groups()) == expected_rules,
            timeout_s=60, what=f"{expected_rules} rules to be loaded",
        )
        targets_up = remote.wait_until(
            lambda: (up := remote.targets_up()) and any(api_target in url for url in up) and all(up.values()) and up,
            timeout_s=max(timeout_s, 60), what=f"the api host's metrics ({api_target}) to be scraped",
        )
    except (PrometheusError, OSError) as exc:
        raise dg.Failure(description=f"the monitoring host's Prometheus at {remote.url}: {exc}") from None
    context.log.info(f"{remote.url}: {expected_rules} rules loaded, targets up: {targets_up} (changed={result.changed})")
    return remote, targets_up, {
        "provisioned_by": "ansible (site.yml, tag hosts, monitoring host)",
        "changed": result.changed,
        "per_host": dg.MetadataValue.json(result.per_host),
        "grafana": "render only (no Grafana image offline)" if getattr(ansible, "target", "") == "sim" else "container",
    }


def _healthy(remote: LocalPrometheus, expected_rules: int, api_target: str) -> dict[str, bool] | None:
    """The targets of `remote` when it has every rule loaded and scrapes `api_target` with
    success (all targets up); None otherwise, or when it does not answer."""
    try:
        if sum(len(g["rules"]) for g in remote.rule_groups()) != expected_rules:
            return None
        up = remote.targets_up()
    except (PrometheusError, OSError, ValueError, KeyError):
        return None
    return up if up and any(api_target in url for url in up) and all(up.values()) else None
