"""The hosts dashboard: CPU, memory, disk and network of the machines Prometheus scrapes with
node_exporter (job `node`, from the renderer's host targets).

In the `local` target the monitoring provisioner runs a node_exporter on loopback beside
Prometheus (this machine is the API host). In `sim` and `aws` the `node_exporter` role runs one
on every host, at its private address, and the `prometheus` role scrapes them all in job `node`:
one `instance` per host, which the panels split by. One function per panel."""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from .panels import RATE, dashboard, query, row, stat, timeseries
from .prometheus_config import HOST_JOB

UID = "mlops-hosts"
NODE = f'job="{HOST_JOB}"'


def hosts_up():
    return stat(
        "Hosts scraped",
        "node_exporter targets that answered the last scrape.",
        units.Short,
        [query(f"sum(up{{{NODE}}})", "up")],
        span=24,
    )


def cpu_busy():
    return timeseries(
        "CPU busy",
        "Share of CPU time not idle, per host.",
        units.PercentUnit,
        [query(f'1 - avg by (instance) (rate(node_cpu_seconds_total{{{NODE}, mode="idle"}}[{RATE}]))', "{{instance}}")],
    )


def load_per_core():
    return timeseries(
        "Load average per core (1m)",
        "Runnable tasks per core: above 1 the host is overloaded.",
        units.Short,
        [
            query(
                f"node_load1{{{NODE}}} / on(instance) count by (instance) (node_cpu_seconds_total{{{NODE}, mode=\"idle\"}})",
                "{{instance}}",
            )
        ],
    )


def memory_used():
    return timeseries(
        "Memory used",
        "Share of memory not available to new processes, per host.",
        units.PercentUnit,
        [query(f"1 - node_memory_MemAvailable_bytes{{{NODE}}} / node_memory_MemTotal_bytes{{{NODE}}}", "{{instance}}")],
    )


def disk_used():
    return timeseries(
        "Disk used (root filesystem)",
        "Share of the root filesystem in use, per host.",
        units.PercentUnit,
        [
            query(
                f'1 - node_filesystem_avail_bytes{{{NODE}, mountpoint="/"}} / node_filesystem_size_bytes{{{NODE}, mountpoint="/"}}',
                "{{instance}}",
            )
        ],
    )


def network_traffic():
    return timeseries(
        "Network traffic",
        "Bytes per second received and sent, per host (loopback excluded).",
        units.BytesPerSecondSI,
        [
            query(f'sum by (instance) (rate(node_network_receive_bytes_total{{{NODE}, device!="lo"}}[{RATE}]))', "{{instance}} in"),
            query(f'sum by (instance) (rate(node_network_transmit_bytes_total{{{NODE}, device!="lo"}}[{RATE}]))', "{{instance}} out"),
        ],
        span=24,
    )


def build():
    return (
        dashboard(UID, "mlops-assets / Hosts", "CPU, memory, disk and network of the hosts scraped with node_exporter (job `node`).")
        .with_row(row("Hosts"))
        .with_panel(hosts_up())
        .with_panel(cpu_busy())
        .with_panel(load_per_core())
        .with_panel(memory_used())
        .with_panel(disk_used())
        .with_panel(network_traffic())
    )
