"""The Prometheus configuration: scrape the API's metrics port (Ray's metrics export port)
on each API host, the hosts' node_exporters and the Pushgateway that holds the pipeline's
metrics (with `honor_labels`: the pushed `job`, `asset` and `target` labels are kept), load
the rule files beside it, send the alerts to the Alertmanagers named (alertmanager_config.py)."""

from __future__ import annotations

from collections.abc import Sequence

from .yaml_text import dump

from . import API_JOB

HOST_JOB = "node"
PUSHGATEWAY_JOB = "mlops-pushgateway"  # the scrape job; the pushed series keep their own job label
RULE_FILES = ["rules/*.yml"]  # relative to the config file: the same layout locally and on a host


def prometheus_config(
    api_targets: Sequence[str],
    host_targets: Sequence[str] = (),
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    rule_files: Sequence[str] = RULE_FILES,
    pushgateway_targets: Sequence[str] = (),
    alertmanager_targets: Sequence[str] = (),
) -> str:
    """`api_targets` are host:port of the API's metrics endpoints; `host_targets` optional
    node_exporter endpoints; `pushgateway_targets` optional Pushgateway endpoints (the local
    target's, on loopback); `alertmanager_targets` host:port of the Alertmanagers that receive
    the alerts (none: the alerts are only listed in Prometheus). On the monitoring host (sim,
    aws) the `prometheus` role writes the same jobs from the inventory (`mlops-api`, `node`,
    `mlops-pushgateway`) and the alerting block for its `alertmanager` role."""
    if not api_targets:
        raise ValueError("prometheus_config needs at least one API metrics target (host:port)")
    scrape_configs = [
        {
            "job_name": API_JOB,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": sorted(api_targets)}],
        }
    ]
    if host_targets:
        scrape_configs.append({"job_name": HOST_JOB, "static_configs": [{"targets": sorted(host_targets)}]})
    if pushgateway_targets:
        # honor_labels: a pushed series keeps its `job` (pipeline_metrics.JOB) and grouping labels
        # instead of getting this scrape job's (the Pushgateway's documented set-up).
        scrape_configs.append({"job_name": PUSHGATEWAY_JOB, "honor_labels": True,
                               "static_configs": [{"targets": sorted(pushgateway_targets)}]})
    document = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": list(rule_files),
        "scrape_configs": scrape_configs,
    }
    if alertmanager_targets:
        document["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": sorted(alertmanager_targets)}]}]}
    return dump(document)
