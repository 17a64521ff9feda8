"""Every monitoring file as text, and the command that writes them.

    python -m mlops_assets.monitoring.render [--out grafana_dashboards] [--api-target HOST:PORT ...]

`make dashboards` runs it with the defaults to regenerate the committed `grafana_dashboards/`
(a test checks that the committed files equal a fresh render). The `dashboards` asset renders
the same tree with the deployment's own targets and dataset into MLOPS_HOME.

Layout (what the Ansible `prometheus` and `grafana` roles copy):

    dashboards/*.json                       Grafana dashboards (stable uids)
    provisioning/datasources/mlops-assets.yaml
    provisioning/dashboards/mlops-assets.yaml
    prometheus/prometheus.yml               scrape config; loads rules/*.yml beside it
    prometheus/rules/*.rules.yml            recording and alert rules
    prometheus/tests/alerts.test.yml        promtool unit tests of the alerts
    alertmanager/alertmanager.yml           routes by severity to the configured receivers
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import api_dashboard, hosts_dashboard, model_dashboard, pipeline_dashboard
from .alertmanager_config import AlertRouting, alertmanager_config
from .profile import TrainingProfile
from .prometheus_config import prometheus_config
from .provisioning import DEFAULT_DASHBOARDS_PATH, dashboards_provider_yaml, datasource_yaml
from .rule_tests import rule_tests
from .rules import AlertSettings, rule_groups
from .yaml_text import dump

DASHBOARD_BUILDERS = {"mlops-api.json": api_dashboard.build, "mlops-model.json": model_dashboard.build, "mlops-hosts.json": hosts_dashboard.build,
                      "mlops-pipeline.json": pipeline_dashboard.build}
CONFIG_FILE = "prometheus/prometheus.yml"
RULES_DIR = "prometheus/rules"
TESTS_FILE = "prometheus/tests/alerts.test.yml"
ALERTMANAGER_FILE = "alertmanager/alertmanager.yml"
OWNED_FOLDERS = ("dashboards", "provisioning", "prometheus", "alertmanager")
DEFAULT_API_TARGETS = ("127.0.0.1:8080",)
DEFAULT_ALERTMANAGER_TARGETS = ("127.0.0.1:9093",)
DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"


@dataclass(frozen=True)
class RenderSettings:
    api_targets: Sequence[str] = DEFAULT_API_TARGETS
    host_targets: Sequence[str] = ()
    pushgateway_targets: Sequence[str] = ()
    alertmanager_targets: Sequence[str] = DEFAULT_ALERTMANAGER_TARGETS  # where Prometheus sends its alerts
    prometheus_url: str = DEFAULT_PROMETHEUS_URL  # what Grafana's datasource points at
    dashboards_path: str = DEFAULT_DASHBOARDS_PATH  # where Grafana finds the dashboards' JSON
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    alerts: AlertSettings = field(default_factory=AlertSettings)
    routing: AlertRouting = field(default_factory=AlertRouting)


def dashboard_json(build) -> str:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    model = build().build()
    # Stable panel ids in layout order (the builders leave them unset; Grafana links use them).
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n"


def render_all(profile: TrainingProfile, settings: RenderSettings = RenderSettings()) -> dict[str, str]:
    """relative path -> file content, for the whole tree."""
    files = {f"dashboards/{name}": dashboard_json(build) for name, build in DASHBOARD_BUILDERS.items()}
    files["provisioning/datasources/mlops-assets.yaml"] = datasource_yaml(settings.prometheus_url)
    files["provisioning/dashboards/mlops-assets.yaml"] = dashboards_provider_yaml(settings.dashboards_path)
    files[CONFIG_FILE] = prometheus_config(
        settings.api_targets, settings.host_targets, settings.scrape_interval, settings.evaluation_interval,
        pushgateway_targets=settings.pushgateway_targets, alertmanager_targets=settings.alertmanager_targets,
    )
    files[ALERTMANAGER_FILE] = alertmanager_config(settings.routing)
    groups = rule_groups(profile, settings.alerts)
    for name, document in groups.items():
        files[f"{RULES_DIR}/{name}"] = dump(document)
    files[TESTS_FILE] = dump(rule_tests(profile, [f"../rules/{name}" for name in groups], settings.alerts))
    return dict(sorted(files.items()))


def content_hash(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path, text in sorted(files.items()):
        digest.update(path.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:16]


def write(files: dict[str, str], out_dir: str | Path) -> list[Path]:
    """Write the tree; files of an earlier render that are no longer rendered are removed
    (only under the folders this renderer owns). Alertmanager's file may name a webhook URL
    with a token in it: readable by its owner only."""
    out = Path(out_dir)
    written = []
    for path, text in files.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        if path == ALERTMANAGER_FILE:
            target.chmod(0o600)
        written.append(target)
    for owned in OWNED_FOLDERS:
        for stale in (out / owned).rglob("*") if (out / owned).exists() else []:
            if stale.is_file() and str(stale.relative_to(out)) not in files:
                stale.unlink()
    return written


def default_profile() -> TrainingProfile:
    """The training profile of the default dataset with the `dataset` asset's default split:
    what the committed files are rendered from."""
    from mlops_assets.ml.data import DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec, build_dataset

    from .profile import training_profile

    return training_profile(build_dataset(DEFAULT_SOURCE, DEFAULT_TARGET, SplitSpec()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_assets.monitoring.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "grafana_dashboards"))
    parser.add_argument("--api-target", action="append", help="host:port of an API metrics endpoint (repeatable)")
    parser.add_argument("--host-target", action="append", default=[], help="host:port of a node_exporter (repeatable)")
    parser.add_argument("--pushgateway-target", action="append", default=[], help="host:port of a Pushgateway (repeatable)")
    parser.add_argument("--alertmanager-target", action="append", default=[], help="host:port of an Alertmanager (repeatable)")
    parser.add_argument("--prometheus-url", default=DEFAULT_PROMETHEUS_URL, help="the URL Grafana's datasource uses")
    parser.add_argument("--dashboards-path", default=DEFAULT_DASHBOARDS_PATH, help="where Grafana reads the dashboards")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files in --out differ from a fresh render")
    args = parser.parse_args(argv)
    settings = RenderSettings(
        api_targets=tuple(args.api_target or DEFAULT_API_TARGETS),
        host_targets=tuple(args.host_target),
        pushgateway_targets=tuple(args.pushgateway_target),
        alertmanager_targets=tuple(args.alertmanager_target or DEFAULT_ALERTMANAGER_TARGETS),
        prometheus_url=args.prometheus_url,
        dashboards_path=args.dashboards_path,
    )
    files = render_all(default_profile(), settings)
    out = Path(args.out)
    if args.check:
        differ = [p for p, text in files.items() if not (out / p).exists() or (out / p).read_text() != text]
        for path in differ:
            print(f"differs from a fresh render: {out / path}", file=sys.stderr)
        return 1 if differ else 0
    write(files, out)
    print(f"rendered {len(files)} files into {out} (content {content_hash(files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
