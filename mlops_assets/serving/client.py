"""A client of the prediction API (standard library only): what deployments, health checks and
smoke predictions use, whatever serves the API (the local Ray instance, a container on a host).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


# How `ApiClient.readyz_probe` reports that nothing answered (no HTTP status at all).
NO_ANSWER = "/readyz did not answer"


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
        return self.readyz_probe(timeout_s)[0]

    def readyz_probe(self, timeout_s: float = 5.0) -> tuple[dict[str, Any] | None, str | None, str | None]:
        """One GET /readyz: (its answer when 200, the X-Served-By node when the API names the
        node of the replica that answered, what went wrong otherwise)."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=timeout_s) as response:
                return json.loads(response.read()), response.headers.get("x-served-by"), None
        except urllib.error.HTTPError as exc:
            return None, exc.headers.get("x-served-by"), f"/readyz answered {exc.code}: {exc.read()[:300].decode(errors='replace')}"
        except (OSError, ValueError) as exc:
            return None, None, f"{NO_ANSWER}: {exc}"

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


@dataclass
class HostSurvey:
    """What one API host's /readyz answered to a few probes (`survey`)."""

    url: str
    versions: set[str] = field(default_factory=set)  # the model versions answered
    engines: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)  # X-Served-By: the nodes whose replicas answered
    errors: list[str] = field(default_factory=list)  # probes not answered 200
    rejected: dict[str, Any] | None = None  # a model a replica refused (it kept its own)

    def problem(self, expected_version: str) -> str | None:
        """Why this host does not serve `expected_version`, or None when it does."""
        if self.errors and not self.versions:
            return f"{self.url}: {self.errors[-1]}"
        if self.errors:
            return f"{self.url}: {len(self.errors)} probe(s) not answered ready ({self.errors[-1]})"
        if self.versions != {str(expected_version)}:
            return f"{self.url} answered model version {', '.join(sorted(self.versions))}, expected {expected_version}"
        return None


def survey(urls: list[str], probes: int = 6, timeout_s: float = 5.0) -> list[HostSurvey]:
    """`probes` GETs of /readyz through each URL. In a Ray cluster each answer may come from a
    replica on another node (its X-Served-By says which): several probes per host see more of
    the replicas behind it."""
    found = []
    for url in urls:
        host, client = HostSurvey(url), ApiClient(url)
        for _ in range(probes):
            answer, node, error = client.readyz_probe(timeout_s)
            if error:
                host.errors.append(error)
                if error.startswith(NO_ANSWER):
                    break  # nothing listens (or a timeout): more probes would only wait as long again
                continue
            try:
                host.versions.add(str(answer["model"]["version"]))
            except (KeyError, TypeError):
                host.errors.append(f"/readyz answered without a model version: {str(answer)[:200]}")
                continue
            host.engines.add(str(answer.get("engine")))
            host.rejected = answer.get("rejected") or host.rejected
            if node:
                host.nodes.add(node)
        found.append(host)
    return found


def nodes_serving(url: str, version: str, nodes: list[str], max_probes: int = 60,
                  timeout_s: float = 5.0) -> tuple[dict[str, str], dict[str, Any] | None]:
    """GET /readyz through `url` (a cluster node's proxy, which routes to replicas on every node)
    until a replica on each of `nodes` has answered `version`, a replica reports it refused
    `version`, or `max_probes` are spent: ({node: the version its replica last answered},
    the refusal or None). `container wait-version` (the api role) decides on it."""
    client, seen = ApiClient(url), {}
    for _ in range(max_probes):
        answer, node, error = client.readyz_probe(timeout_s)
        if error or not answer:
            continue
        rejected = answer.get("rejected")
        if rejected and str(rejected.get("version")) == str(version):
            return seen, rejected
        if node:
            seen[node] = str((answer.get("model") or {}).get("version"))
        if all(seen.get(each) == str(version) for each in nodes):
            break
    return seen, None

