"""Every environment setting of the project, parsed once.

Nothing else in the package reads ``os.environ`` for project settings: a newcomer finds
every knob here, and the README's configuration table mirrors this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

TARGETS = ("local", "sim", "aws")


class SettingsError(ValueError):
    """An environment variable has a value the project cannot use."""


@dataclass(frozen=True)
class Settings:
    home: Path
    target: str
    dataset: str | None
    target_column: str | None
    tracking_uri: str
    mlflow_ui_url: str
    model_name: str
    # Automation (schedules and sensors; see automation.py)
    retrain_cron: str = "0 3 * * *"
    prometheus_url: str = "http://127.0.0.1:9090"
    drift_threshold: float = 0.25
    drift_window: str = "1h"
    drift_cooldown_minutes: float = 60.0
    # Container image (assets/packaging.py): registry to push to in the aws target, e.g. ECR.
    image_registry: str | None = None

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def artifact_root(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def io_dir(self) -> Path:
        return self.home / "storage"


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("MLOPS_HOME") or PROJECT_ROOT / ".mlops").expanduser().resolve()
    target = env.get("MLOPS_TARGET", "local") or "local"
    if target not in TARGETS:
        raise SettingsError(
            f"MLOPS_TARGET={target!r} is not a known target; set it to one of {', '.join(TARGETS)}"
        )
    tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    return Settings(
        home=home,
        target=target,
        dataset=env.get("MLOPS_DATASET") or None,
        target_column=env.get("MLOPS_TARGET_COLUMN") or None,
        tracking_uri=tracking_uri,
        mlflow_ui_url=(env.get("MLOPS_MLFLOW_UI_URL") or _default_ui_url(tracking_uri)).rstrip("/"),
        model_name=env.get("MLOPS_MODEL_NAME") or "mlops-assets-classifier",
        retrain_cron=env.get("MLOPS_RETRAIN_CRON") or "0 3 * * *",
        prometheus_url=(env.get("MLOPS_PROMETHEUS_URL") or "http://127.0.0.1:9090").rstrip("/"),
        drift_threshold=_number(env, "MLOPS_DRIFT_THRESHOLD", 0.25),
        drift_window=env.get("MLOPS_DRIFT_WINDOW") or "1h",
        drift_cooldown_minutes=_number(env, "MLOPS_DRIFT_COOLDOWN_MINUTES", 60.0),
        image_registry=env.get("MLOPS_IMAGE_REGISTRY") or None,
    )


def _number(env, name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number; set it to a number like {default}") from None


def _default_ui_url(tracking_uri: str) -> str:
    # A tracking server is its own UI; a sqlite store is shown by `make mlflow-ui`.
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    return "http://127.0.0.1:5000"
