"""Rolling a new model version out to the local API, and back when it is not healthy.

Plain logic over a small backend interface (`RolloutBackend`): what to apply, how to tell
that the new version serves, when to give up, and how to restore the last healthy config.
The Ray Serve resource (resources/ray_serve.py) is the real backend; tests drive every case
through a fake one, with a fake clock, in milliseconds.

The rules:
- the same request as the last healthy deployment, with the API serving that version: nothing
  is applied; only the caller's check (the smoke prediction) runs;
- anything that fails before the config reaches the backend (registry, download, starting
  Ray) leaves the API as it was (`DeployFailed(applied=False)`, worth a retry);
- once applied, the new version must report ready on several consecutive answers, then pass
  the caller's check; a refused model (`rejected` in /readyz), Serve giving up, a timeout or a
  failed check rolls back: the last healthy config is applied again and waited for, or, with
  none on record, the failed application is removed;
- the record (`deployed` in state.py) names a config only once it passed the check, so a run
  killed at any point leaves the last healthy config on record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from mlops_assets.serving.client import ApiError
from mlops_assets.state import StateFile

Log = Callable[[str], None]


class RolloutError(RuntimeError):
    """A step of a rollout failed (the API did not come up as asked)."""


class DeployFailed(RolloutError):
    """A deployment that failed, and what became of the API (the message says it in words)."""

    def __init__(self, message: str, *, version: str, reason: str, applied: bool, rolled_back: bool,
                 previous_version: str | None, serving: str | None) -> None:
        super().__init__(message)
        self.version = version  # the version that failed
        self.reason = reason  # why, in one line
        self.applied = applied  # whether its config reached the backend
        self.rolled_back = rolled_back  # whether the previous config serves again
        self.previous_version = previous_version  # the last healthy version on record, if any
        self.serving = serving  # the version /readyz reports now (None: no answer)

    def metadata(self) -> dict[str, Any]:
        return {
            "failed_version": self.version,
            "failure_reason": self.reason,
            "applied": self.applied,
            "rolled_back": self.rolled_back,
            "previous_version": self.previous_version or "none",
            "serving_version": self.serving or "none (the API does not answer /readyz)",
        }


@dataclass(frozen=True)
class Deployment:
    """What a rollout did: the served version and whether anything changed."""

    name: str
    version: str
    action: str  # "unchanged", "reconfigured" (hot swap), "deployed" (first or rebuilt)
    started: bool  # the backend (the Ray instance) was started by this rollout
    seconds: float
    previous_version: str | None = None  # the version served before (from the record)
    check_result: Any = None  # what the caller's check returned


class RolloutBackend(Protocol):
    """What a rollout needs from the serving stack."""

    api_url: str
    num_replicas: int

    def ensure_started(self, log: Log) -> bool:
        """Start the serving stack unless it runs; True if it was started."""

    def readyz(self) -> dict[str, Any] | None:
        """The API's /readyz answer when it is 200, else None."""

    def apply(self, config: dict[str, Any]) -> None:
        """Hand the config to the stack (raises on refusal)."""

    def remove(self) -> None:
        """Remove the application (nothing serves afterwards)."""

    def gave_up(self) -> str | None:
        """Why the stack gave up starting the current application, or None."""

    def logs_hint(self) -> str:
        """Where the replicas' logs are (for messages)."""


def same_app(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two Serve configs differ only in their deployments' settings (a model change:
    reconfigured in place) rather than in the application (rebuilt)."""

    def app(config: dict[str, Any]) -> dict[str, Any]:
        first = dict(config["applications"][0])
        first.pop("deployments", None)
        return first

    return app(old) == app(new)


class Rollout:
    """One rollout policy over one backend and one record."""

    def __init__(self, backend: RolloutBackend, record: StateFile, *, ready_timeout_s: float = 240.0,
                 rollback_timeout_s: float | None = None, status_every_s: float = 10.0, poll_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.backend = backend
        self.record = record
        self.ready_timeout_s = ready_timeout_s
        self.rollback_timeout_s = rollback_timeout_s
        self.status_every_s = status_every_s
        self.poll_s = poll_s
        self.clock = clock
        self.sleep = sleep

    # -- the rollout ---------------------------------------------------------------------------
    def deploy(self, version: str, request: dict[str, Any], prepare: Callable[[], tuple[dict[str, Any], str | None]],
               check: Callable[[], Any] | None = None, log: Log | None = None) -> Deployment:
        """Serve `version`. `request` is what was asked (compared with the record before any
        lookup); `prepare()` builds the config (and the URI a replica would name when it
        refuses the model): everything that may fail before the API is touched. `check()`
        runs once the version reports ready (raise to fail it)."""
        log = log or (lambda message: None)
        started = self.clock()
        previous = self.record.read() or {}
        if previous.get("request") == request and self._serves(version):
            return self._unchanged(version, previous, check, log, started)
        try:
            config, refused_uri = prepare()
            started_stack = self.backend.ensure_started(log)
        except Exception as exc:
            raise self._not_applied(version, previous, reason_of(exc)) from exc
        if not started_stack and previous.get("config") == config and self._serves(version):
            self.record.write({**previous, "request": request})
            return self._unchanged(version, previous, check, log, started)
        action = "deployed"
        if not started_stack and previous.get("config"):
            action = "reconfigured" if same_app(previous["config"], config) else "deployed"
        log(f"applying the Serve config of model version {version} ({action}); "
            f"last healthy version on record: {previous.get('version') or 'none'}")
        try:
            self.backend.apply(config)
            self.wait_ready(version, refused_uri=refused_uri, engine=wanted_engine(config))
            result = check() if check is not None else None
        except Exception as exc:
            raise self._roll_back(version, previous, reason_of(exc), log) from exc
        # Only now: a run killed before this line leaves the last healthy config on record.
        self.record.write({"config": config, "version": version, "request": request})
        name, served = self._model_ref()
        log(f"{action}: the API at {self.backend.api_url} serves {name} version {served}")
        return Deployment(name, served, action, started_stack, self.clock() - started,
                          previous_version=previous.get("version"), check_result=result)

    def _unchanged(self, version: str, previous: dict[str, Any], check, log: Log, started: float) -> Deployment:
        log(f"the API already serves version {version} with these settings: nothing to do")
        result = None
        if check is not None:
            try:
                result = check()
            except Exception as exc:
                raise DeployFailed(
                    f"model version {version}, already in service, failed its health check ({reason_of(exc)}); "
                    "nothing was changed, so there is nothing to roll back",
                    version=version, reason=reason_of(exc), applied=False, rolled_back=False,
                    previous_version=previous.get("version"), serving=version,
                ) from exc
        return Deployment(*self._model_ref(), "unchanged", False, self.clock() - started,
                          previous_version=previous.get("version"), check_result=result)

    def _not_applied(self, version: str, previous: dict[str, Any], reason: str) -> DeployFailed:
        serving = self._served_version()
        left = (f"the API at {self.backend.api_url} still serves version {serving}, untouched" if serving
                else f"the API at {self.backend.api_url} was not answering and was left as it was")
        return DeployFailed(
            f"model version {version} was not deployed ({reason}); nothing was applied: {left}",
            version=version, reason=reason, applied=False, rolled_back=False,
            previous_version=previous.get("version"), serving=serving,
        )

    def _roll_back(self, version: str, previous: dict[str, Any], reason: str, log: Log) -> DeployFailed:
        """After a failed deployment: the last healthy config again, or no application at all
        when there is none on record."""
        failed = f"model version {version} failed its health check ({reason})"
        previous_version = previous.get("version")
        common = {"version": version, "reason": reason, "applied": True, "previous_version": previous_version}
        log(f"{failed}; rolling back to {('version ' + previous_version) if previous_version else 'nothing'}")
        if not previous.get("config"):
            try:
                self.backend.remove()
                left = "the API is left stopped (the failed application was removed)"
            except Exception as exc:
                left = f"removing the failed application failed too ({reason_of(exc)}): the API is left unready"
            return DeployFailed(
                f"{failed}; nothing to roll back to (no earlier healthy deployment on record in {self.record.path}): {left}",
                rolled_back=False, serving=self._served_version(), **common,
            )
        rolled_back_at = self.clock()
        try:
            self.backend.apply(previous["config"])
            self.wait_ready(previous_version, timeout_s=self.rollback_timeout_s or self.ready_timeout_s)
        except Exception as exc:
            serving = self._served_version()
            return DeployFailed(
                f"{failed}; rolling back to version {previous_version} failed too ({reason_of(exc)}): the API "
                f"{('serves version ' + serving) if serving else 'does not answer /readyz'}; "
                f"see {self.backend.logs_hint()}",
                rolled_back=False, serving=serving, **common,
            )
        self.record.write(previous)
        log(f"rolled back to version {previous_version} in {self.clock() - rolled_back_at:.1f}s")
        return DeployFailed(f"{failed}; rolled back: the API serves version {previous_version} again",
                            rolled_back=True, serving=previous_version, **common)

    # -- readiness -----------------------------------------------------------------------------
    def wait_ready(self, version: str, timeout_s: float | None = None, refused_uri: str | None = None,
                   engine: str | None = None) -> None:
        """Until /readyz reports `version` on several consecutive answers (behind a load
        balancer, one answer may come from a replica not yet swapped), and `engine` when given
        (a change of engine alone keeps the version; a replica that fell back to scikit-learn
        says why, `engine_reason`, and counts as swapped). Ends at once when a
        replica says it refused the model (`rejected`: `refused_uri`, else the version: it
        keeps serving its old one and will not retry), or when the backend gave up (asked every
        `status_every_s` while the version is not there yet)."""
        timeout_s = timeout_s or self.ready_timeout_s
        start = self.clock()
        deadline, next_status = start + timeout_s, start + self.status_every_s
        streak, last = 0, None
        while self.clock() < deadline:
            ready = last = self.backend.readyz()
            serves = bool(ready) and ready["model"]["version"] == version and (
                engine is None or ready.get("engine", engine) == engine or bool(ready.get("engine_reason")))
            if not serves and self.clock() >= next_status:
                self._raise_if_gave_up(version)
                next_status = self.clock() + self.status_every_s
            rejected = (ready or {}).get("rejected")
            if rejected and not serves and (
                rejected.get("model_uri") == refused_uri if refused_uri else rejected.get("version") == version
            ):
                raise RolloutError(f"the replicas could not load model version {version} and kept version "
                                   f"{ready['model']['version']}: {rejected.get('error')}")
            streak = streak + 1 if serves else 0
            if streak >= 4 * max(1, self.backend.num_replicas):
                return
            self.sleep(self.poll_s)
        self._raise_if_gave_up(version)
        raise RolloutError(f"the API at {self.backend.api_url} did not report model version {version} within "
                           f"{timeout_s:.0f}s (last /readyz: {last}); see {self.backend.logs_hint()}")

    def _raise_if_gave_up(self, version: str) -> None:
        why = self.backend.gave_up()
        if why:
            raise RolloutError(f"Serve gave up starting the replicas of model version {version}: {why}")

    def _served_version(self) -> str | None:
        ready = self.backend.readyz()
        return ready["model"]["version"] if ready else None

    def _serves(self, version: str) -> bool:
        return self._served_version() == version

    def _model_ref(self) -> tuple[str, str]:
        ready = self.backend.readyz() or {"model": {"name": "", "version": ""}}
        return ready["model"]["name"], ready["model"]["version"]


def wanted_engine(config: dict[str, Any]) -> str | None:
    """The serving engine a Serve config asks its replicas for (user_config `serving_engine`)."""
    for app in config.get("applications") or []:
        for deployment in app.get("deployments") or []:
            engine = (deployment.get("user_config") or {}).get("serving_engine")
            if engine:
                return str(engine)
    return None


def reason_of(exc: BaseException) -> str:
    """An exception as one short line for a failure message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (RolloutError, ApiError, AssertionError)):  # our own messages say what failed
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 600 else text[:600] + " ..."
