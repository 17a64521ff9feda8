"""A client of the prediction API (standard library only): what deployments, health checks and
smoke predictions use, whatever serves the API (the local Ray instance, a container on a host).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


class ApiError(RuntimeError):
    """The API did not answer as expected; the message says what it answered."""


@dataclass(frozen=True)
class ApiClient:
    url: str  # http://HOST:PORT
    api_key: str | None = None  # sent as `Authorization: Bearer` on /predict when the API needs one

    def __repr__(self) -> str:  # never the key
        return f"ApiClient(url={self.url!r}, api_key={'set' if self.api_key else None})"

    def readyz(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """/readyz's answer when it is 200 (a model is loaded), else None."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=timeout_s) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def ready_version(self, timeout_s: float = 2.0) -> str | None:
        """The model version the API reports ready, or None when it is not ready."""
        ready = self.readyz(timeout_s)
        try:
            return str(ready["model"]["version"]) if ready else None
        except (KeyError, TypeError):
            return None

    def predict(self, instances: list[dict[str, Any]], timeout_s: float = 30.0) -> tuple[dict[str, Any], float]:
        """One POST /predict: (answer, seconds). Raises ApiError with the API's own error
        when it does not answer 200."""
        body = json.dumps({"instances": instances}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.url}/predict", data=body, headers=headers)
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ApiError(f"POST /predict answered {exc.code}: {exc.read()[:1000].decode(errors='replace')} ({self.url})") from None
        except (OSError, ValueError) as exc:
            raise ApiError(f"POST {self.url}/predict failed: {exc}") from None
        return answer, time.perf_counter() - started

    def smoke_check(self, instances: list[dict[str, Any]], version: str) -> tuple[dict[str, Any], float]:
        """The health check after a deployment: one prediction of `instances`, answered by
        model `version` with one label per row. Returns (answer, seconds)."""
        answer, seconds = self.predict(instances)
        served = str((answer.get("model") or {}).get("version"))
        if served != str(version):
            raise ApiError(f"the smoke prediction through {self.url} was answered by model version {served}, "
                           f"expected {version}")
        labels = answer.get("predictions") or []
        if len(labels) != len(instances):
            raise ApiError(f"the smoke prediction returned {len(labels)} labels for {len(instances)} rows")
        return answer, seconds
