"""Prometheus's HTTP query API, wrapped once (what the drift sensor reads)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import requests


class PrometheusQueryError(RuntimeError):
    """Prometheus did not answer, or refused the query."""


def read_password(password_env: str | None, password_file: str | None) -> str | None:
    """A basic-auth password: the environment variable `password_env`, else the file
    `password_file` (the rehearsal's generated secret); None when neither has one."""
    password = os.environ.get(password_env) if password_env else None
    if not password and password_file and Path(password_file).is_file():
        password = Path(password_file).read_text().strip()
    return password or None


class PrometheusApi(dg.ConfigurableResource):
    """Instant queries against a Prometheus server (local: http://127.0.0.1:9090)."""

    url: str = "http://127.0.0.1:9090"
    timeout_seconds: float = 5.0
    # Basic auth (the monitoring host's Prometheus). The password is never part of the
    # config: it is read at query time from the environment variable `password_env`, else
    # from `password_file` (the rehearsal's generated secret).
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None

    def auth(self) -> tuple[str, str] | None:
        if not self.username:
            return None
        password = read_password(self.password_env, self.password_file)
        if not password:
            raise PrometheusQueryError(
                f"Prometheus at {self.url} needs basic auth: set {self.password_env or 'the password'}"
                + (f" (or generate {self.password_file} with a sim run)" if self.password_file else ""))
        return (self.username, password)

    def vector(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant vector as (labels, value) pairs."""
        try:
            response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout_seconds,
                                    auth=self.auth())
        except requests.RequestException as exc:
            raise PrometheusQueryError(f"Prometheus at {self.url} did not answer ({exc}); set MLOPS_PROMETHEUS_URL") from exc
        if response.status_code == 401:
            raise PrometheusQueryError(f"Prometheus at {self.url} refused the credentials (HTTP 401): check {self.password_env}")
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
