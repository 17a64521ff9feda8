"""The Prometheus configuration: scrape the API's metrics port (Ray's metrics export port)
on each API host, load the rule files beside it."""

from __future__ import annotations

from collections.abc import Sequence

from .yaml_text import dump

from . import API_JOB

HOST_JOB = "node"
RULE_FILES = ["rules/*.yml"]  # relative to the config file: the same layout locally and on a host


def prometheus_config(
    api_targets: Sequence[str],
    host_targets: Sequence[str] = (),
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    rule_files: Sequence[str] = RULE_FILES,
) -> str:
    """`api_targets` are host:port of the API's metrics endpoints; `host_targets` optional
    node_exporter endpoints (none are deployed by this project yet: see hosts_dashboard)."""
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
    document = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": evaluation_interval},
        "rule_files": list(rule_files),
        "scrape_configs": scrape_configs,
    }
    return dump(document)
