"""Shared fixtures. Every test runs against a state folder in a temporary directory: the
user's .mlops/ is never touched."""

# Fixtures of other areas, shared by their test files (one Ray Serve instance per session).
pytest_plugins = ["mlops_assets_tests.serving_fixtures"]

import os
import tempfile
from pathlib import Path

# Before anything imports mlops_assets (its settings are read at import time).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlops-test-home-"))
os.environ["MLOPS_HOME"] = str(_SESSION_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLOPS_DATASET", None)
os.environ.pop("MLOPS_TARGET_COLUMN", None)
os.environ["MLOPS_TARGET"] = "local"
os.environ["DAGSTER_HOME"] = str(_SESSION_HOME / "dagster")
(_SESSION_HOME / "dagster").mkdir(parents=True, exist_ok=True)

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
