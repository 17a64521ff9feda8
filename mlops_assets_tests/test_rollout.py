"""Every rollout and rollback case of the local API, over a fake backend and a fake clock
(mlops_assets/rollout.py): no Ray, no patching, milliseconds each. The same cases against the
real Ray Serve instance are in test_failure_safety.py."""

from __future__ import annotations

import json

import pytest

from mlops_assets.rollout import DeployFailed, Rollout, RolloutError
from mlops_assets.state import RECORDS

pytestmark = pytest.mark.unit


def config(version: str, app: str = "a") -> dict:
    return {"applications": [{"app": app, "deployments": [{"user_config": {"v": version}}]}]}


class FakeStack:
    """A serving stack as the rollout sees it: what /readyz says after each applied config."""

    api_url = "http://127.0.0.1:1"
    num_replicas = 1

    def __init__(self, serving: str | None = None, *, refuses: set[str] = frozenset(), never_ready: set[str] = frozenset(),
                 apply_fails_for: set[str] = frozenset(), gives_up_on: set[str] = frozenset(), running: bool = True,
                 remove_fails: bool = False) -> None:
        self.serving = serving
        self.refuses, self.never_ready, self.apply_fails_for = refuses, never_ready, apply_fails_for
        self.gives_up_on, self.running, self.remove_fails = gives_up_on, running, remove_fails
        self.applied: list[str] = []
        self.rejected: dict | None = None
        self.removed = False
        self.pending: str | None = None

    def ensure_started(self, log) -> bool:
        if self.running:
            return False
        self.running = True
        return True

    def readyz(self):
        if self.serving is None:
            return None
        answer = {"model": {"name": "m", "version": self.serving}}
        if self.rejected:
            answer["rejected"] = self.rejected
        return answer

    def apply(self, cfg) -> None:
        version = cfg["applications"][0]["deployments"][0]["user_config"]["v"]
        self.applied.append(version)
        if version in self.apply_fails_for:
            raise RolloutError(f"deploying the Serve application failed: version {version} refused")
        if version in self.refuses:
            self.rejected = {"version": version, "model_uri": f"models:/m/{version}", "error": "cannot load"}
            return  # keeps serving the old one
        self.rejected = None
        self.pending = version
        self.serving = None if version in self.never_ready | self.gives_up_on else version

    def remove(self) -> None:
        if self.remove_fails:
            raise RolloutError("removing the Serve application failed")
        self.removed, self.serving = True, None

    def gave_up(self):
        return "replica crashed at start" if self.pending in self.gives_up_on else None

    def logs_hint(self) -> str:
        return "the replica logs"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def rollout(stack: FakeStack, tmp_path, **kwargs) -> Rollout:
    clock = Clock()
    return Rollout(stack, RECORDS["deployed"].in_folder(tmp_path), clock=clock, sleep=clock.sleep,
                   ready_timeout_s=kwargs.pop("ready_timeout_s", 30), **kwargs)


def record(tmp_path) -> dict | None:
    return RECORDS["deployed"].in_folder(tmp_path).read()


def healthy(tmp_path, version: str) -> dict:
    value = {"config": config(version), "version": version, "request": {"v": version}}
    RECORDS["deployed"].in_folder(tmp_path).write(value)
    return value


def prepare(version: str, app: str = "a"):
    return lambda: (config(version, app), f"models:/m/{version}")


def test_a_healthy_new_version_is_reconfigured_in_place_and_recorded(tmp_path):
    healthy(tmp_path, "1")
    stack = FakeStack(serving="1")
    done = rollout(stack, tmp_path).deploy("2", {"v": "2"}, prepare("2"), check=lambda: "smoke ok")
    assert (done.action, done.version, done.previous_version, done.check_result) == ("reconfigured", "2", "1", "smoke ok")
    assert record(tmp_path)["version"] == "2" and record(tmp_path)["request"] == {"v": "2"}


def test_another_application_config_is_a_deployment_not_a_reconfigure(tmp_path):
    healthy(tmp_path, "1")
    done = rollout(FakeStack(serving="1"), tmp_path).deploy("2", {"v": "2"}, prepare("2", app="b"))
    assert done.action == "deployed"


def test_the_same_request_while_the_api_serves_it_applies_nothing(tmp_path):
    healthy(tmp_path, "1")
    stack = FakeStack(serving="1")
    prepared = []
    done = rollout(stack, tmp_path).deploy("1", {"v": "1"}, lambda: prepared.append(1) or (config("1"), None))
    assert done.action == "unchanged" and stack.applied == [] and prepared == []


def test_the_same_request_with_the_api_down_is_applied_again(tmp_path):
    healthy(tmp_path, "1")
    stack = FakeStack(serving=None, running=False)
    done = rollout(stack, tmp_path).deploy("1", {"v": "1"}, prepare("1"))
    assert done.action == "deployed" and done.started and stack.applied == ["1"]


def test_an_unchanged_version_that_fails_its_check_is_reported_without_a_rollback(tmp_path):
    healthy(tmp_path, "1")
    stack = FakeStack(serving="1")

    def check():
        raise RolloutError("the smoke prediction answered 500")

    with pytest.raises(DeployFailed) as failure:
        rollout(stack, tmp_path).deploy("1", {"v": "1"}, prepare("1"), check=check)
    assert "already in service, failed its health check (the smoke prediction answered 500)" in str(failure.value)
    assert not failure.value.applied and stack.applied == []


def test_a_failure_before_anything_is_applied_leaves_the_api_untouched(tmp_path):
    before = healthy(tmp_path, "1")
    stack = FakeStack(serving="1")

    def broken():
        raise FileNotFoundError("models:/m/9 does not exist")

    with pytest.raises(DeployFailed) as failure:
        rollout(stack, tmp_path).deploy("9", {"v": "9"}, broken)
    message = str(failure.value)
    assert message.startswith("model version 9 was not deployed (FileNotFoundError: models:/m/9 does not exist)")
    assert "still serves version 1, untouched" in message
    assert failure.value.applied is False and stack.applied == [] and record(tmp_path) == before


def test_a_version_the_replicas_refuse_is_rolled_back(tmp_path):
    before = healthy(tmp_path, "1")
    stack = FakeStack(serving="1", refuses={"2"})
    with pytest.raises(DeployFailed) as failure:
        rollout(stack, tmp_path).deploy("2", {"v": "2"}, prepare("2"))
    message = str(failure.value)
    assert "the replicas could not load model version 2 and kept version 1: cannot load" in message
    assert message.endswith("rolled back: the API serves version 1 again")
    assert failure.value.rolled_back and stack.applied == ["2", "1"] and record(tmp_path) == before


def test_a_version_that_never_gets_ready_is_rolled_back_after_the_timeout(tmp_path):
    before = healthy(tmp_path, "1")
    stack = FakeStack(serving="1", never_ready={"2"})
    with pytest.raises(DeployFailed) as failure:
        rollout(stack, tmp_path, ready_timeout_s=20).deploy("2", {"v": "2"}, prepare("2"))
    assert "did not report model version 2 within 20s" in str(failure.value)
    assert failure.value.rolled_back and record(tmp_path) == before


def test_serve_giving_up_ends_the_wait_early_and_rolls_back(tmp_path):
    healthy(tmp_path, "1")
    stack = FakeStack(serving="1", gives_up_on={"2"})
    clock = Clock()
    policy = Rollout(stack, RECORDS["deployed"].in_folder(tmp_path), clock=clock, sleep=clock.sleep,
                     ready_timeout_s=600, status_every_s=10)
    with pytest.raises(DeployFailed) as failure:
        policy.deploy("2", {"v": "2"}, prepare("2"))
    assert "Serve gave up starting the replicas of model version 2: replica crashed at start" in str(failure.value)
    assert clock.now < 60  # not the 600 s timeout
    assert failure.value.rolled_back


def test_a_failed_check_rolls_back(tmp_path):
    before = healthy(tmp_path, "1")
    stack = FakeStack(serving="1")

    def check():
        raise RolloutError("the smoke prediction was answered by model version 1")

    with pytest.raises(DeployFailed) as failure:
        rollout(stack, tmp_path).deploy("2", {"v": "2"}, prepare("2"), check=check)
    assert "failed its health check (the smoke prediction was answered by model version 1)" in str(failure.value)
    assert failure.value.rolled_back and stack.serving == "1" and record(tmp_path) == before


def test_with_no_earlier_deployment_there_is_nothing_to_roll_back_to(tmp_path):
    stack = FakeStack(serving=None, never_ready={"1"})
    with pytest.raises(DeployFailed) as failure:
        rollout(stack, tmp_path).deploy("1", {"v": "1"}, prepare("1"))
    message = str(failure.value)
    assert message.startswith("model version 1 failed its health check (the API at http://127.0.0.1:1 did not report model version 1")
    assert "nothing to roll back to (no earlier healthy deployment on record" in message
    assert "the API is left stopped (the failed application was removed)" in message
    assert stack.removed and not failure.value.rolled_back and record(tmp_path) is None


def test_when_removing_the_failed_application_fails_too_it_says_so(tmp_path):
    stack = FakeStack(serving=None, never_ready={"1"}, remove_fails=True)
    with pytest.raises(DeployFailed) as failure:
        rollout(stack, tmp_path).deploy("1", {"v": "1"}, prepare("1"))
    assert "removing the failed application failed too (removing the Serve application failed): the API is left unready" \
        in str(failure.value)


def test_a_rollback_that_fails_says_so(tmp_path):
    before = healthy(tmp_path, "1")
    stack = FakeStack(serving="1", never_ready={"2"}, apply_fails_for={"1"})
    with pytest.raises(DeployFailed) as failure:
        rollout(stack, tmp_path).deploy("2", {"v": "2"}, prepare("2"))
    message = str(failure.value)
    assert "model version 2 failed its health check" in message
    assert "rolling back to version 1 failed too (deploying the Serve application failed: version 1 refused)" in message
    assert "the API does not answer /readyz" in message
    assert stack.applied == ["2", "1"] and not failure.value.rolled_back
    assert record(tmp_path) == before  # still the last healthy config: the next run starts from it


def test_a_run_killed_while_waiting_leaves_the_last_healthy_record(tmp_path):
    before = healthy(tmp_path, "1")
    stack = FakeStack(serving="1", never_ready={"2"})
    clock = Clock()

    def killed(seconds):
        raise SystemExit("killed while waiting")  # not an Exception: no rollback either, like SIGKILL

    policy = Rollout(stack, RECORDS["deployed"].in_folder(tmp_path), clock=clock, sleep=killed)
    with pytest.raises(SystemExit):
        policy.deploy("2", {"v": "2"}, prepare("2"))
    assert stack.applied == ["2"] and record(tmp_path) == before


def test_a_record_from_a_newer_release_is_refused_with_a_message(tmp_path):
    path = RECORDS["deployed"].in_folder(tmp_path).path
    path.write_text(json.dumps({"version": "1", "schema_version": 99}))
    with pytest.raises(Exception, match="schema_version 99, newer than this release reads"):
        rollout(FakeStack(serving="1"), tmp_path).deploy("1", {"v": "1"}, prepare("1"))


class EngineStack(FakeStack):
    """Replicas that apply a change of engine (same version) only after a few /readyz answers,
    as Serve's in-place reconfigure does: until then they report the old engine."""

    def __init__(self, engine: str, lag: int, falls_back: bool = False) -> None:
        super().__init__(serving="1")
        self.engine, self.wanted, self.lag, self.falls_back = engine, engine, lag, falls_back

    def apply(self, cfg) -> None:
        self.applied.append(cfg["applications"][0]["deployments"][0]["user_config"]["serving_engine"])
        self.wanted = self.applied[-1]

    def readyz(self):
        answer = super().readyz()
        if self.wanted != self.engine:
            self.lag -= 1
            if self.lag <= 0:
                self.engine = "sklearn" if self.falls_back else self.wanted
        answer["engine"] = self.engine
        if self.falls_back and self.engine == "sklearn":
            answer["engine_reason"] = "ONNX Runtime could not serve it"
        return answer


def _engine_config(engine: str) -> dict:
    return {"applications": [{"app": "a", "deployments": [{"user_config": {"v": "1", "serving_engine": engine}}]}]}


def test_a_change_of_engine_alone_waits_until_the_replicas_report_it(tmp_path):
    # Same version, other engine: "ready with version 1" is true before the swap, so the
    # rollout waits for the engine too (the check then runs against the new engine).
    RECORDS["deployed"].in_folder(tmp_path).write({"config": _engine_config("onnx"), "version": "1", "request": {"e": "onnx"}})
    stack = EngineStack("onnx", lag=6)
    seen = []
    done = rollout(stack, tmp_path).deploy("1", {"e": "sklearn"}, lambda: (_engine_config("sklearn"), None),
                                           check=lambda: seen.append(stack.engine))
    assert done.action == "reconfigured" and stack.applied == ["sklearn"]
    assert seen == ["sklearn"]


def test_a_replica_that_falls_back_to_scikit_learn_counts_as_swapped(tmp_path):
    # ONNX asked, the replica serves the pipeline and says why: that is a served model, not a
    # rollout that never becomes ready.
    RECORDS["deployed"].in_folder(tmp_path).write({"config": _engine_config("sklearn"), "version": "1", "request": {"e": "sk"}})
    stack = EngineStack("sklearn", lag=3, falls_back=True)
    done = rollout(stack, tmp_path).deploy("1", {"e": "onnx"}, lambda: (_engine_config("onnx"), None))
    assert done.action == "reconfigured" and stack.readyz()["engine_reason"]
