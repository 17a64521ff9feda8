"""The API dashboard: traffic, errors, latency, queues and replicas of the prediction API.

Mostly Ray Serve's own series (the queries follow Ray's Serve dashboard), which count every
request the ingress answered, including errors raised before the app's code runs; the
app's own `ray_mlops_api_*` series add the per-endpoint view. One function per panel.
"""

from __future__ import annotations

from grafana_foundation_sdk.models import units

from mlops_assets.serving import DEPLOYMENT_NAME

from .panels import API, APP, RATE, dashboard, query, row, stat, timeseries

UID = "mlops-api"
DEPLOYMENT = f'{APP}, deployment="{DEPLOYMENT_NAME}"'


def target_up():
    return stat(
        "Metrics targets up",
        "Scrape targets of the API's metrics port that answered the last scrape (`up`).",
        units.Short,
        [query(f"sum(up{{{API}}})", "up")],
    )


# Ray 2.60 declares ray_serve_deployment_replica_healthy, but its exporter drops the series
# (measured: never exported by this app); a replica that runs reports its processing-queries
# gauge every few seconds, and a dead replica's series ages out within two export intervals.
# Ray's exporter drops a gauge not refreshed within two export intervals, and Serve refreshes
# some gauges only every few seconds or on change: `last_over_time` bridges the gaps.
def last(gauge: str) -> str:
    return f"last_over_time({gauge}{{{DEPLOYMENT}}}[1m])"


REPLICAS = f"count by (deployment) ({last('ray_serve_replica_processing_queries')})"


def healthy_replicas():
    return stat(
        "Replicas running",
        "Replicas of the prediction deployment that report to Ray's metrics agent.",
        units.Short,
        [query(REPLICAS, "{{deployment}}")],
    )


def request_rate_stat():
    return stat(
        "Requests per second",
        "Every HTTP request the API answered, all routes and statuses.",
        units.RequestsPerSecond,
        [query(f"sum(rate(ray_serve_num_http_requests_total{{{APP}}}[{RATE}]))", "requests/s")],
    )


def error_ratio_stat():
    return stat(
        "Server errors (5xx)",
        "Share of requests answered with a 5xx status: what the error-budget alerts watch.",
        units.PercentUnit,
        [
            query(
                f'sum(rate(ray_serve_num_http_requests_total{{{APP}, status_code=~"5.."}}[{RATE}]) or vector(0))'
                f" / sum(rate(ray_serve_num_http_requests_total{{{APP}}}[{RATE}]))",
                "5xx ratio",
            )
        ],
    )


def request_rate_by_status():
    return timeseries(
        "Request rate by status code",
        "HTTP requests per second answered by the API, by status code (Ray Serve's ingress counter).",
        units.RequestsPerSecond,
        [query(f"sum by (status_code) (rate(ray_serve_num_http_requests_total{{{APP}}}[{RATE}]))", "{{status_code}}")],
        span=12,
        stacked=True,
    )


def request_rate_by_route():
    return timeseries(
        "Request rate by endpoint",
        "Requests per second by endpoint and status, as counted by the API itself.",
        units.RequestsPerSecond,
        [query(f"sum by (route, status) (rate(ray_mlops_api_requests_total{{{API}}}[{RATE}]))", "{{route}} {{status}}")],
        span=12,
    )


def error_ratio_by_status():
    return timeseries(
        "Error ratio by status code",
        "Share of all requests answered with each non-2xx status: 4xx are rejected inputs "
        "(422 validation, 413 too large), 5xx are server failures.",
        units.PercentUnit,
        [
            query(
                f'sum by (status_code) (rate(ray_serve_num_http_requests_total{{{APP}, status_code!~"2.."}}[{RATE}]))'
                f" / ignoring(status_code) group_left sum(rate(ray_serve_num_http_requests_total{{{APP}}}[{RATE}]))",
                "{{status_code}}",
            )
        ],
    )


def _latency_quantile(q: float, legend: str):
    return query(
        f"histogram_quantile({q}, sum by (le) (rate(ray_serve_http_request_latency_ms_bucket{{{APP}}}[{RATE}])))",
        legend,
    )


def latency_quantiles():
    return timeseries(
        "Latency p50 / p95 / p99 (ingress)",
        "End-to-end request latency measured by Ray Serve's ingress, all routes.",
        units.Milliseconds,
        [_latency_quantile(0.5, "p50"), _latency_quantile(0.95, "p95"), _latency_quantile(0.99, "p99")],
    )


def _predict_quantile(q: float, legend: str):
    return query(
        f'histogram_quantile({q}, sum by (le) (rate(ray_mlops_api_request_latency_seconds_bucket{{{API}, route="/predict"}}[{RATE}])))',
        legend,
    )


def predict_latency_quantiles():
    return timeseries(
        "POST /predict latency p50 / p95 / p99 (app)",
        "Time from request received to response sent for /predict, measured by the API: what the latency SLO alert watches.",
        units.Seconds,
        [_predict_quantile(0.5, "p50"), _predict_quantile(0.95, "p95"), _predict_quantile(0.99, "p99")],
    )


def ongoing_requests():
    return timeseries(
        "Ongoing requests",
        "Requests being processed by each replica, and requests Serve's router has assigned to replicas.",
        units.Short,
        [
            query(f"sum by (replica) ({last('ray_serve_replica_processing_queries')})", "replica {{replica}}"),
            query(f"sum({last('ray_serve_num_ongoing_requests_at_replicas')})", "assigned by the router"),
        ],
        span=12,
    )


def queued_requests():
    return timeseries(
        "Queued requests",
        "Requests waiting in Serve's router for a replica to accept them: a queue that grows means too few replicas.",
        units.Short,
        [query(f"sum by (deployment) ({last('ray_serve_deployment_queued_queries')})", "{{deployment}}")],
        span=12,
    )


def replicas_over_time():
    return timeseries(
        "Replicas and their utilization",
        "Replicas running, and each replica's share of capacity spent in user code (Serve's utilization gauge).",
        units.Short,
        [
            query(REPLICAS, "replicas {{deployment}}"),
            query(f"max by (replica) (max_over_time(ray_serve_replica_utilization_percent{{{DEPLOYMENT}}}[1m]))", "utilization % {{replica}}"),
        ],
        span=12,
    )


# Per node: every API host is a scrape target of its own (`instance`), and each one exports
# the series of its own node (its proxy's requests, its replicas). With one API host each panel
# has one line; a Ray cluster across API hosts shows one line per node.
def requests_by_node():
    return timeseries(
        "Requests per second by node",
        "HTTP requests answered per second on each API host (scrape target): how the load spreads over the cluster's nodes.",
        units.RequestsPerSecond,
        [query(f"sum by (instance) (rate(ray_serve_num_http_requests_total{{{APP}}}[{RATE}]))", "{{instance}}")],
        span=8,
    )


def replicas_by_node():
    return timeseries(
        "Replicas by node",
        "Replicas of the prediction deployment running on each API host; the total is what the no-replica alert counts.",
        units.Short,
        [query(f"count by (instance) ({last('ray_serve_replica_processing_queries')})", "{{instance}}")],
        span=8,
    )


def latency_by_node():
    return timeseries(
        "Latency p99 by node (ingress)",
        "99th percentile of Ray Serve's ingress latency on each API host: a node slower than the others shows here.",
        units.Milliseconds,
        [query(f"histogram_quantile(0.99, sum by (instance, le) (rate(ray_serve_http_request_latency_ms_bucket{{{APP}}}[{RATE}])))",
               "p99 {{instance}}")],
        span=8,
    )


def build():
    return (
        dashboard(UID, "mlops-assets / Prediction API", "Traffic, errors, latency, queues and replicas of the prediction API (Ray Serve).")
        .with_row(row("Overview"))
        .with_panel(target_up())
        .with_panel(healthy_replicas())
        .with_panel(request_rate_stat())
        .with_panel(error_ratio_stat())
        .with_row(row("Traffic and errors"))
        .with_panel(request_rate_by_status())
        .with_panel(request_rate_by_route())
        .with_panel(error_ratio_by_status())
        .with_row(row("Latency"))
        .with_panel(latency_quantiles())
        .with_panel(predict_latency_quantiles())
        .with_row(row("Saturation"))
        .with_panel(ongoing_requests())
        .with_panel(queued_requests())
        .with_panel(replicas_over_time())
        .with_row(row("Per node (API hosts)"))
        .with_panel(requests_by_node())
        .with_panel(replicas_by_node())
        .with_panel(latency_by_node())
    )
