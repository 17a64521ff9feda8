"""The monitoring provisioner: puts the rendered rules, scrape config and dashboards in service
and checks they are live. One class per kind of target, chosen in targets.py; `dashboards`
renders the files and calls `check()` then `provision()` without knowing which:

- `LocalMonitoring` (`local`): the local Prometheus on loopback (resources/prometheus.py),
  started or reloaded with the files, with a node_exporter (this machine is the API host) and
  the Pushgateway of the pipeline's metrics beside it; then every rule must be loaded and every
  scrape target up.
- `MonitoringHost` (`aws`, `sim`): site.yml's monitoring plays, limited to the monitoring host,
  ship the files to Prometheus, Alertmanager and Grafana there (tag `monitoring-config`: the
  files, reloads and containers alone while that Prometheus answers; else tag `hosts`, the
  whole base plays with the engine and the images); then that Prometheus must
  have every rule loaded and scrape the API host and every host's node_exporter (the
  `node_exporter` role's, at the hosts' private addresses), every target up. When the previous
  materialization put these very files in service and that Prometheus still answers with them,
  Ansible is not run.

Both check the files with promtool and Alertmanager's configuration with amtool first; files
that passed once (record `promtool_passed`) are not tested again. Both build Alertmanager's
routing from the settings (a webhook, SMTP, timings; monitoring/alertmanager_config.py): a wrong
value is a failure naming its variable, no receiver at all is a valid configuration.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dagster as dg

from mlops_assets.monitoring import alertmanager_config as am
from mlops_assets.monitoring import render as render_module
from mlops_assets.monitoring.promql import seconds_of
from mlops_assets.resources.ansible import Ansible, AnsibleError, inventory_hosts
from mlops_assets.resources.hosts import HOSTS_TAG, MONITORING_CONFIG_TAG
from mlops_assets.resources.prometheus import Amtool, LocalPrometheus, PrometheusError, PrometheusHttp, Promtool
from mlops_assets.state import atomic_write_text
from mlops_assets.state import StateFile


@dataclass(frozen=True)
class Rendered:
    """The files `dashboards` rendered, and what a live Prometheus must show for them."""

    out_dir: Path
    config_file: Path
    tests_file: Path
    rules_dir: Path
    dashboards_dir: Path
    content_hash: str
    expected_rules: int
    api_target: str  # host:port of the API's metrics
    alertmanager_file: Path
    # The `dashboards` config's intervals: in the rendered file for the local Prometheus, passed
    # to the prometheus role on the monitoring host.
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"

    @classmethod
    def of(cls, out_dir: Path, content_hash: str, expected_rules: int, api_target: str,
           scrape_interval: str = "15s", evaluation_interval: str = "15s") -> "Rendered":
        return cls(out_dir, out_dir / render_module.CONFIG_FILE, out_dir / render_module.TESTS_FILE,
                   out_dir / render_module.RULES_DIR, out_dir / "dashboards", content_hash, expected_rules, api_target,
                   out_dir / render_module.ALERTMANAGER_FILE, scrape_interval, evaluation_interval)


@dataclass(frozen=True)
class Monitoring:
    """The `dashboards` asset's value: where the rendered files are and what serves them."""

    out_dir: str
    files: list[str]
    content_hash: str
    prometheus_url: str | None
    targets_up: dict[str, bool]


@dataclass(frozen=True)
class MonitoringResult:
    prometheus_url: str | None
    targets_up: dict[str, bool]
    details: dict[str, Any] = field(default_factory=dict)


def metrics_target(metrics_url: str) -> str:
    """host:port of a metrics endpoint (what Prometheus scrapes)."""
    parsed = urlparse(metrics_url)
    return f"{parsed.hostname}:{parsed.port or 80}"


def rules_loaded(http: PrometheusHttp) -> int:
    return sum(len(group["rules"]) for group in http.rule_groups())


def answers(http: PrometheusHttp, timeout_s: float = 5.0) -> bool:
    """Whether this Prometheus answers its API with the credentials given, within `timeout_s`."""
    try:
        PrometheusHttp(http.url, timeout_s=timeout_s, auth=http.auth).rule_groups()
    except (PrometheusError, OSError, ValueError, KeyError):
        return False
    return True


class MonitoringProvisioner(dg.ConfigurableResource):
    """Checks and serves the rendered monitoring files (see the module docstring)."""

    out_dir: str  # where `dashboards` renders (same layout as grafana_dashboards/)
    promtool_record: str  # state.RECORDS["promtool_passed"]
    promtool_binary: str = "promtool"
    amtool_binary: str = "amtool"
    # Alertmanager's receivers and timings (settings.py: MLOPS_ALERT_*); the webhook URL is
    # resolved from the environment at run time (it may carry a token).
    alert_webhook_url: str | None = None
    alert_smtp: dict[str, str] = {}
    alert_timings: str = ""
    # Prometheus's scrape and evaluation interval unless the `dashboards` config sets them
    # (settings.py: MLOPS_SCRAPE_INTERVAL).
    scrape_interval: str = "15s"

    def smtp_password_file(self) -> str | None:
        """Where the Alertmanager that reads the rendered file finds the SMTP password (from
        MLOPS_ALERT_SMTP_PASSWORD, written by the subclass); None: no password file."""
        return None

    def alert_routing(self) -> tuple[am.AlertRouting, str]:
        """Alertmanager's routing and the target-down alert's `for`, from the settings."""
        try:
            timings, target_down_for = am.parse_timings(self.alert_timings)
            smtp = self.alert_smtp or {}
            am.check_smtp(smtp.get("smarthost", ""), smtp.get("from", ""), smtp.get("to", ""))
            webhook = am.check_webhook_url(self.alert_webhook_url) if self.alert_webhook_url else None
        except ValueError as exc:
            raise dg.Failure(description=f"Alertmanager's settings: {exc}") from None
        email = None
        if smtp.get("smarthost"):
            email = am.Smtp(smtp["smarthost"], smtp["from"], smtp["to"], smtp.get("username", ""),
                            self.smtp_password_file() or "")
        return am.AlertRouting(webhook, email, timings), target_down_for

    def alertmanager_targets(self, api_prometheus_url: str | None) -> tuple[str, ...]:
        """host:port of the Alertmanager the rendered Prometheus configuration sends alerts to."""
        return ()

    def host_targets(self) -> tuple[str, ...]:
        """node_exporter addresses this provisioner adds to the scrape config."""
        return ()

    def pushgateway_targets(self) -> tuple[str, ...]:
        """Pushgateway addresses this provisioner adds to the scrape config (honor_labels)."""
        return ()

    def ensure_pushgateway(self, log) -> None:
        """Have the Pushgateway that the pipeline pushes to running, if this provisioner runs one
        (`cli run` calls it before the first wave)."""

    def datasource_url(self, api_prometheus_url: str | None) -> str:  # pragma: no cover - abstract
        """The Prometheus that Grafana's datasource points at."""
        raise NotImplementedError

    def check(self, rendered: Rendered, log) -> bool:
        """promtool's config and rule checks and the alert unit tests; False when these very
        files passed them before (nothing run)."""
        record = StateFile(self.promtool_record)
        passed = {"content_hash": rendered.content_hash, "out_dir": str(rendered.out_dir)}
        if record.read() == passed:
            return False
        promtool = Promtool(self.promtool_binary)
        try:
            promtool.check_config(rendered.config_file)  # also checks every rule file it loads
            promtool.test_rules(rendered.tests_file)
            Amtool(self.amtool_binary).check_config(rendered.alertmanager_file)
        except PrometheusError as exc:
            raise dg.Failure(description=f"the rendered monitoring files in {rendered.out_dir} failed their checks: {exc}") from None
        record.write(passed)
        log.info(f"promtool: config, rules and alert unit tests pass; amtool: Alertmanager's config passes ({rendered.out_dir})")
        return True

    def provision(self, rendered: Rendered, *, previous: dict[str, Any], api_prometheus_url: str | None,
                  inventory: dict | None, targets_up_timeout_s: float, log) -> MonitoringResult:
        raise NotImplementedError  # pragma: no cover - abstract

    def stop(self) -> bool:
        """Stop what this provisioner runs on this machine (`make down`)."""
        return False


class LocalMonitoring(MonitoringProvisioner):
    """`local`: the local Prometheus (and node_exporter) on loopback."""

    prometheus: LocalPrometheus

    def host_targets(self) -> tuple[str, ...]:
        target = self.prometheus.node_exporter_target
        return (target,) if target else ()

    def pushgateway_targets(self) -> tuple[str, ...]:
        target = self.prometheus.pushgateway_target
        return (target,) if target else ()

    def ensure_pushgateway(self, log) -> None:
        try:
            self.prometheus.ensure_pushgateway(log)
        except PrometheusError as exc:
            log.warning(f"the Pushgateway could not start, so this run's pipeline metrics are not pushed: {exc}")

    def datasource_url(self, api_prometheus_url: str | None) -> str:
        return self.prometheus.url

    def alertmanager_targets(self, api_prometheus_url: str | None) -> tuple[str, ...]:
        target = self.prometheus.alertmanager_target
        return (target,) if target else ()

    def smtp_password_file(self) -> str | None:
        """MLOPS_ALERT_SMTP_PASSWORD in a 0600 file of the local Alertmanager's folder."""
        password = os.environ.get("MLOPS_ALERT_SMTP_PASSWORD")
        if not password:
            return None
        path = self.prometheus.alertmanager_dir / "smtp_password"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != password:
            atomic_write_text(path, password, mode=0o600)
        return str(path)

    def provision(self, rendered: Rendered, *, previous: dict[str, Any], api_prometheus_url: str | None,
                  inventory: dict | None, targets_up_timeout_s: float, log) -> MonitoringResult:
        prometheus, http = self.prometheus, self.prometheus.http
        try:
            prometheus.ensure_running(rendered.config_file, log=log, alertmanager_config=rendered.alertmanager_file)
            http.wait_until(lambda: rules_loaded(http) == rendered.expected_rules, timeout_s=30,
                            what=f"{rendered.expected_rules} rules to be loaded")
            targets_up = http.wait_until(lambda: (up := http.targets_up()) and all(up.values()) and up,
                                         timeout_s=targets_up_timeout_s, what="every scrape target to be up")
        except PrometheusError as exc:
            raise dg.Failure(description=f"{exc} (Prometheus log: {prometheus.log_file})") from None
        log.info(f"Prometheus at {prometheus.url}: {rendered.expected_rules} rules loaded, targets up: {targets_up}")
        return MonitoringResult(prometheus.url, targets_up, {"alertmanager_url": prometheus.alertmanager_url or "not run"})

    def stop(self) -> bool:
        return self.prometheus.stop()


class MonitoringHost(MonitoringProvisioner):
    """`aws`, `sim`: Prometheus, Alertmanager, the Pushgateway and Grafana on the monitoring host,
    provisioned by Ansible."""

    ansible: Ansible
    # sim: no Grafana image exists offline, so the role renders Grafana's files only.
    grafana_render_only: bool = False
    # Prometheus's basic auth there: the prometheus role's web user; the password is the
    # Ansible resource's secret extra var (MLOPS_PROMETHEUS_PASSWORD, generated for sim).
    prometheus_user: str = "admin"
    # The alertmanager role's published port on the monitoring host (alertmanager_port).
    alertmanager_port: int = 9093

    def alertmanager_targets(self, api_prometheus_url: str | None) -> tuple[str, ...]:
        """The monitoring host's Alertmanager (the prometheus role's own template says the same)."""
        host = urlparse(api_prometheus_url).hostname if api_prometheus_url else None
        return (f"{host}:{self.alertmanager_port}",) if host else ()

    def alertmanager_url(self, prometheus_url: str) -> str:
        return f"http://{self.alertmanager_targets(prometheus_url)[0]}"

    def smtp_password_file(self) -> str | None:
        """Inside the Alertmanager container: the role writes MLOPS_ALERT_SMTP_PASSWORD there."""
        return "/etc/alertmanager/smtp_password" if os.environ.get("MLOPS_ALERT_SMTP_PASSWORD") else None

    def prometheus_http(self, url: str) -> PrometheusHttp:
        password = self.ansible.secret("prometheus_web_password")
        if not password:
            raise dg.Failure(description="the monitoring host's Prometheus needs basic auth: set MLOPS_PROMETHEUS_PASSWORD")
        return PrometheusHttp(url, auth=(self.prometheus_user, password))

    def datasource_url(self, api_prometheus_url: str | None) -> str:
        if not api_prometheus_url:
            raise dg.Failure(description="deployed_api names no monitoring host Prometheus: materialize deployed_hosts first")
        return api_prometheus_url

    def provision(self, rendered: Rendered, *, previous: dict[str, Any], api_prometheus_url: str | None,
                  inventory: dict | None, targets_up_timeout_s: float, log) -> MonitoringResult:
        if not inventory:
            raise dg.Failure(description="deployed_api carries no inventory of the hosts: materialize deployed_hosts first")
        url = self.datasource_url(api_prometheus_url)
        http = self.prometheus_http(url)
        grafana = "render only (no Grafana image offline)" if self.grafana_render_only else "container"
        expected = (rendered.api_target, *node_targets(inventory))
        if previous.get("content_hash") == rendered.content_hash and previous.get("prometheus_url") == url:
            # Up to one scrape (and its timeout) for a target deployed_api just restarted.
            healthy = healthy_targets(http, rendered.expected_rules, expected,
                                      settle_s=seconds_of(rendered.scrape_interval) + 10)
            if healthy:
                log.info(f"{url} already runs these files: {rendered.expected_rules} rules loaded, targets up {healthy}; "
                    "Ansible not run")
                return MonitoringResult(url, healthy, {
                    "provisioned_by": "unchanged: the monitoring host already runs these files (checked live)",
                    "changed": 0, "grafana": previous.get("grafana", grafana), "alertmanager_url": self.alertmanager_url(url)})
            log.info(f"{url} does not answer with every rule and the api and node targets up: provisioning again")
        extra_vars = {"prometheus_rule_files_dir": str(rendered.rules_dir),
                      "prometheus_scrape_interval": rendered.scrape_interval,
                      "prometheus_evaluation_interval": rendered.evaluation_interval,
                      "grafana_dashboards_src_dir": str(rendered.dashboards_dir),
                      "alertmanager_config_src": str(rendered.alertmanager_file),
                      # read by Alertmanager from a file the role writes (smtp_password_file)
                      **({"alertmanager_smtp_password": os.environ["MLOPS_ALERT_SMTP_PASSWORD"]}
                         if self.smtp_password_file() else {})}

        def in_service() -> dict[str, bool]:
            http.wait_until(lambda: rules_loaded(http) == rendered.expected_rules, timeout_s=60,
                            what=f"{rendered.expected_rules} rules to be loaded")
            return http.wait_until(
                lambda: (up := http.targets_up()) and scraped(up, expected) and all(up.values()) and up,
                timeout_s=max(targets_up_timeout_s, 60),
                what=f"the api host's metrics and every host's node_exporter ({', '.join(expected)}) to be scraped",
            )

        # A Prometheus that answers needs only the new files and reloads: the roles' tag
        # monitoring-config, without the engine, node_exporter and the images (about 20 s less).
        # One that does not, or whose targets stay down after that, gets the monitoring host's
        # whole base plays, which start whatever is missing there.
        attempts = (MONITORING_CONFIG_TAG, HOSTS_TAG) if answers(http) else (HOSTS_TAG,)
        for tag in attempts:
            try:
                result = self.ansible.run_playbook(inventory, "site.yml", tags=[tag], limit="monitoring",
                                                   log=log.info, extra_vars=extra_vars)
            except AnsibleError as exc:
                raise dg.Failure(description=f"provisioning the monitoring host failed: {exc}") from None
            try:
                targets_up = in_service()
                break
            except (PrometheusError, OSError) as exc:
                if tag == attempts[-1]:
                    raise dg.Failure(description=f"the monitoring host's Prometheus at {url}: {exc}") from None
                log.warning(f"{url} after the new files alone: {exc}; running the monitoring host's whole base plays")
        log.info(f"{url}: {rendered.expected_rules} rules loaded, targets up: {targets_up} (changed={result.changed})")
        return MonitoringResult(url, targets_up, {
            "provisioned_by": f"ansible (site.yml, tag {tag}, monitoring host)", "changed": result.changed,
            "per_host": dg.MetadataValue.json(result.per_host), "grafana": grafana, "alertmanager_url": self.alertmanager_url(url)})


def node_targets(inventory: dict) -> list[str]:
    """host:port of every inventory host's node_exporter: its private address (private_ip, else
    ansible_host) and node_exporter_port (the prometheus role's job `node` scrapes the same)."""
    port = ((inventory.get("all") or {}).get("vars") or {}).get("node_exporter_port", 9100)
    return sorted(f"{v.get('private_ip') or v.get('ansible_host') or name}:{v.get('node_exporter_port', port)}"
                  for name, v in inventory_hosts(inventory).items())


def scraped(up: dict[str, bool], expected) -> bool:
    """Whether every host:port of `expected` is among the scrape URLs of `up`."""
    return all(any(f"//{target}/" in url for url in up) for target in expected)


def healthy_targets(http: PrometheusHttp, expected_rules: int, expected, *, settle_s: float = 0.0,
                    poll_s: float = 1.0, clock=time.monotonic, sleep=time.sleep) -> dict[str, bool] | None:
    """The targets of a Prometheus that has every rule loaded and scrapes every host:port of
    `expected` with success (all targets up); None otherwise, or when it does not answer.

    A target that is scraped but down gets `settle_s` to come up: deployed_api has often just
    restarted the API container (or the engine, and node_exporter with it), and Prometheus sees
    it up on its next scrape. A missing rule or target, or a Prometheus that does not answer,
    is None at once: only provisioning fixes those."""
    deadline = clock() + settle_s
    while True:
        try:
            if rules_loaded(http) != expected_rules:
                return None
            up = http.targets_up()
        except (PrometheusError, OSError, ValueError, KeyError):
            return None
        if not up or not scraped(up, expected):
            return None
        if all(up.values()):
            return up
        if clock() >= deadline:
            return None
        sleep(poll_s)
