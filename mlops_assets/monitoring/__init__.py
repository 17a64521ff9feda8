"""Monitoring as code: Grafana dashboards, Prometheus scrape configuration, alert and recording
rules with their promtool unit tests, and Grafana's file provisioning. Pure builders (no
Dagster): the `dashboards` asset, `make dashboards` and the Ansible roles all use the same files.

    panels.py               shared panel defaults and the Prometheus query builder
    api_dashboard.py        the API: traffic, errors, latency, queue, replicas (ray_serve_*)
    model_dashboard.py      the model: classes predicted, version served, input drift
    hosts_dashboard.py      the API hosts' CPU, memory, disk, network (Ray's node metrics)
    pipeline_dashboard.py   the pipeline: freshness, quality by version, candidates, durations, rollbacks
    pipeline_metrics.py     what each materialization pushes to the Pushgateway (prometheus_client)
    rules.py                recording and alert rules (kubernetes-mixin style)
    rule_tests.py           `promtool test rules` cases: each alert firing and not firing
    prometheus_config.py    the scrape configuration from a list of targets
    provisioning.py         Grafana datasource and dashboard-provider YAML
    render.py               everything above as files; `python -m mlops_assets.monitoring.render`
    promql.py               metric names and selectors in a PromQL expression (for checks)
"""

# Job names of the scrape configuration; every query filters on them so that a Prometheus
# that also scrapes other Ray clusters shows only this API.
API_JOB = "mlops-api"
