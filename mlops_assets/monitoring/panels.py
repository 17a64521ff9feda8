"""Shared defaults for every panel and dashboard (the grafana-foundation-sdk way: small
functions per panel, built on these). Every query runs against the datasource variable, so a
user picks their own Prometheus; `$__rate_interval` lets Grafana size rate windows."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import stat as stat_builders
from grafana_foundation_sdk.builders import timeseries as timeseries_builders
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption

from mlops_assets.serving import APP_NAME

from . import API_JOB
from .provisioning import DATASOURCE_UID

DATASOURCE_VARIABLE = "datasource"
DATASOURCE = DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")
RATE = "$__rate_interval"
# Label matchers every query of this project starts with.
API = f'job="{API_JOB}"'
APP = f'{API}, application="{APP_NAME}"'


def query(expr: str, legend: str = "__auto", ref_id: str = "A") -> prometheus_builders.Dataquery:
    return prometheus_builders.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(DATASOURCE)


def with_queries(panel, queries: list[prometheus_builders.Dataquery]):
    for index, target in enumerate(queries):
        panel = panel.with_target(target.ref_id(chr(ord("A") + index)))
    return panel


def timeseries(title: str, description: str, unit: str, queries: list, span: int = 12, height: int = 8, stacked: bool = False):
    panel = (
        timeseries_builders.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
        .fill_opacity(10 if not stacked else 60)
        .line_width(1)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "lastNotNull", "max"])
        )
    )
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    return with_queries(panel, queries)


def stat(title: str, description: str, unit: str, queries: list, span: int = 6, height: int = 4):
    panel = (
        stat_builders.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return with_queries(panel, queries)


def datasource_variable() -> dashboard_builders.DatasourceVariable:
    return (
        dashboard_builders.DatasourceVariable(DATASOURCE_VARIABLE)
        .label("Prometheus")
        .type("prometheus")
        .current(VariableOption(selected=True, text="default", value=DATASOURCE_UID))
    )


def dashboard(uid: str, title: str, description: str) -> dashboard_builders.Dashboard:
    return (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["mlops-assets", "generated"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone(common.TimeZoneBrowser)
        .with_variable(datasource_variable())
    )


def row(title: str) -> dashboard_builders.Row:
    return dashboard_builders.Row(title)


def panel_queries(dashboard_json: dict, rate_interval: str) -> list[tuple[str, str]]:
    """[(panel title, PromQL)] of a rendered dashboard, `$__rate_interval` replaced by
    `rate_interval` (what Grafana would make of it): what a live check runs against Prometheus."""
    return [(panel["title"], target["expr"].replace(RATE, rate_interval))
            for panel in dashboard_json.get("panels", []) for target in panel.get("targets", [])]
