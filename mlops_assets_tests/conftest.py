"""Shared fixtures. Every test runs against a state folder in a temporary directory: the
user's .mlops/ is never touched."""

# Fixtures of other areas, shared by their test files (one Ray Serve instance per session).
pytest_plugins = ["mlops_assets_tests.serving_fixtures"]

import os
import time
import tempfile
from pathlib import Path

# Before anything imports mlops_assets: every test sees this state folder unless it sets its own.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlops-test-home-"))
os.environ["MLOPS_HOME"] = str(_SESSION_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLOPS_DATASET", None)
os.environ.pop("MLOPS_TARGET_COLUMN", None)
os.environ["MLOPS_TARGET"] = "local"
os.environ["DAGSTER_HOME"] = str(_SESSION_HOME / "dagster")
(_SESSION_HOME / "dagster").mkdir(parents=True, exist_ok=True)
# Prometheus scrapes every 5 s instead of 15 s in the stacks the tests start (CLI runs and the
# rehearsal inherit it): a target is seen up about 5 s sooner after every (re)start.
os.environ["MLOPS_SCRAPE_INTERVAL"] = "5s"

import dagster as dg  # noqa: E402
import pytest  # noqa: E402

from mlops_assets.settings import load_settings  # noqa: E402

ML_ASSET_KEYS = ["dataset", "candidate_models", "selected_model"]


def make_settings(home: Path, **overrides):
    env = {"MLOPS_HOME": str(home), "MLOPS_TARGET": "local", **overrides}
    return load_settings(env)


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, keys, run_config: dict | None = None, raise_on_error=True):
    """Materialize the given asset keys (and their checks) of `defs` in this process."""
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(k) if isinstance(k, str) else k for k in keys})
    return job.execute_in_process(instance=instance, run_config=run_config or {}, raise_on_error=raise_on_error)


def materialize_ml(home: Path, instance: dg.DagsterInstance, run_config: dict | None = None, raise_on_error=True, **env):
    """Materialize dataset -> candidate_models -> selected_model (with checks) under `home`."""
    from mlops_assets.definitions import build_definitions

    defs = build_definitions(make_settings(home, **env))
    return materialize(defs, instance, ML_ASSET_KEYS, run_config, raise_on_error)


@pytest.fixture(scope="session")
def trained_home():
    """A state folder in which the ML phase has run once: the registry holds a champion.

    Shared by every test that needs a served model (serving, monitoring, containers)."""
    home = _SESSION_HOME / "trained"
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        result = materialize_ml(home, instance)
        assert result.success
        selected = result.output_for_node("selected_model")
    return {"home": home, "settings": make_settings(home), "selected": selected}


# -- tiers, timeouts, root, progress -------------------------------------------------------------
# Every test carries exactly one tier marker (pytest.ini). The tiers run cheapest first; a
# failing tier stops the session before the next one starts. Each test's timeout is about 3x
# its measured time (test_times.json, refreshed with scripts/test_times.py). A test marked
# `root` is skipped when not root, except in CI (MLOPS_CI=1), where it fails: CI runs as root
# and a skipped test there would be a silent gap. MLOPS_TEST_PROGRESS_FILE, when set, names
# the test running now (the CI watchdog prints it when it stops a hung run).
#
# Two lanes (`make test` runs pytest-xdist with `-n 2`): the modules marked `second_lane` (the
# rehearsal e2e and the Ansible roles, the longest with hosts in network namespaces) run in one
# worker, every other test in the other, each lane in tier order. The mark balances the two by
# the modules' times in CI's junit; it also keeps those two apart from each other: run side by
# side, their SSH, Ansible and image loads slowed the whole suite by half (measured). A failed tier in either lane stops both before their
# next later-tier test (the lanes share a file that names the failed tiers).
import json  # noqa: E402

TIERS = ("unit", "service", "stack")
TIMES_FILE = Path(__file__).with_name("test_times.json")
TIMEOUT_FLOOR_S = {"unit": 30, "service": 120, "stack": 300}
TIMEOUT_UNMEASURED_S = {"unit": 60, "service": 600, "stack": 1200}
_controller = {"xdist": False}


def pytest_configure(config):
    """One id per run, set before xdist starts its workers (they inherit it): the file of
    failed tiers the lanes share is named after it."""
    if not hasattr(config, "workerinput"):
        os.environ["MLOPS_TEST_RUN_ID"] = f"{os.getpid()}-{int(time.time())}"
        _controller["xdist"] = bool(config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None))


def _failed_tiers_file() -> Path:
    return Path(tempfile.gettempdir()) / f"mlops-failed-tiers-{os.environ['MLOPS_TEST_RUN_ID']}"


def failed_tiers() -> set[str]:
    shared = _failed_tiers_file()
    return set(shared.read_text().split()) if shared.exists() else set()


def lane_of_module(module) -> str:
    """`second` for a test module marked `second_lane` (module-level `pytestmark`), else `first`."""
    marks = getattr(module, "pytestmark", [])
    return "second" if any(mark.name == "second_lane" for mark in (marks if isinstance(marks, list) else [marks])) else "first"


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown to a run without it
def pytest_xdist_make_scheduler(config, log):
    """One worker per lane, each running its tests in collection (tier) order. xdist's own
    loadgroup cannot be used: it renames items through an attribute pytest 9 no longer reads."""
    import importlib

    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].removesuffix(".py").replace("/", ".")
            return lane_of_module(importlib.import_module(module))

    return LaneScheduling(config, log)


def tier_of(item) -> str:
    found = [tier for tier in TIERS if item.get_closest_marker(tier)]
    return found[0] if len(found) == 1 else ""


def timeout_for(nodeid: str, tier: str, measured: dict[str, float]) -> int:
    if nodeid not in measured:
        return TIMEOUT_UNMEASURED_S[tier]
    return int(max(TIMEOUT_FLOOR_S[tier], 3 * measured[nodeid]))


def pytest_collection_modifyitems(config, items):
    untiered = [item.nodeid for item in items if not tier_of(item)]
    if untiered:
        raise pytest.UsageError(f"tests without exactly one tier marker ({', '.join(TIERS)}): {untiered[:5]}")
    measured = json.loads(TIMES_FILE.read_text()) if TIMES_FILE.exists() else {}
    for item in items:
        if not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(timeout_for(item.nodeid, tier_of(item), measured)))
        if item.get_closest_marker("second_lane") and lane_of_module(item.module) != "second":
            raise pytest.UsageError(f"{item.nodeid}: mark a whole module `second_lane` (pytestmark), never one test")
    items.sort(key=lambda item: TIERS.index(tier_of(item)))  # stable: file order within a tier


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        if os.environ.get("MLOPS_CI"):
            pytest.fail("this test needs root, and in CI (MLOPS_CI=1) every test must run: run .ci/run as root")
        pytest.skip("needs root (network namespaces, mounts, Podman): run as root, as CI does")


def pytest_runtest_logreport(report):
    if report.failed:
        tier = next((t for t in TIERS if t in report.keywords), None)
        if tier and not _controller["xdist"]:  # written by the worker that ran the test
            with open(_failed_tiers_file(), "a") as handle:
                handle.write(tier + "\n")


def pytest_runtest_teardown(item, nextitem):
    """Stop before the first test of a tier after one that failed (in this lane or the other):
    both pytest and xdist's workers end the session cleanly once `shouldstop` is set."""
    if nextitem is None:
        return
    tier, failed = tier_of(nextitem), failed_tiers()
    earlier = [t for t in TIERS[: TIERS.index(tier)] if t in failed]
    if earlier:
        item.session.shouldstop = f"the {earlier[0]} tier failed: the {tier} tier and later ones were not run"


def pytest_runtest_logstart(nodeid, location):
    progress = os.environ.get("MLOPS_TEST_PROGRESS_FILE")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if progress and worker:  # one line per lane: MLOPS_TEST_PROGRESS_FILE.gw0, .gw1
        Path(f"{progress}.{worker}").write_text(f"{worker}: {nodeid} (started {time.strftime('%H:%M:%S')})\n")
    elif progress and not _controller["xdist"]:
        Path(progress).write_text(f"{nodeid} (started {time.strftime('%H:%M:%S')})\n")


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's state folder from /tmp after a passing session (a failing one, or
    MLOPS_KEEP_TEST_HOME=1, keeps it to look at)."""
    if not hasattr(session.config, "workerinput"):  # the controller, after every worker
        _failed_tiers_file().unlink(missing_ok=True)
    if exitstatus == 0 and not os.environ.get("MLOPS_KEEP_TEST_HOME"):  # each xdist worker has its own
        import shutil

        shutil.rmtree(_SESSION_HOME, ignore_errors=True)
