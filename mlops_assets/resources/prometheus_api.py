"""Prometheus's HTTP query API, wrapped once (what the drift sensor reads)."""

from __future__ import annotations

import dagster as dg
import requests


class PrometheusQueryError(RuntimeError):
    """Prometheus did not answer, or refused the query."""


class PrometheusApi(dg.ConfigurableResource):
    """Instant queries against a Prometheus server (local: http://127.0.0.1:9090)."""

    url: str = "http://127.0.0.1:9090"
    timeout_seconds: float = 5.0

    def vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant vector as (labels, value) pairs."""
        try:
            response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout_seconds)
        except requests.RequestException as exc:
            raise PrometheusQueryError(f"Prometheus at {self.url} did not answer ({exc}); set MLOPS_PROMETHEUS_URL") from exc
        try:
            body = response.json()
        except ValueError:
            raise PrometheusQueryError(f"Prometheus at {self.url} answered HTTP {response.status_code} without JSON") from None
        if body.get("status") != "success":
            raise PrometheusQueryError(f"Prometheus refused {promql!r}: {body.get('error', body)}")
        data = body["data"]
        if data.get("resultType") != "vector":
            raise PrometheusQueryError(f"{promql!r} gave a {data.get('resultType')}, not an instant vector")
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]
