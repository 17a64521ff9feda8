"""Every materialization pushes the pipeline's metrics: one success hook and one failure hook,
attached to every materializable asset in definitions.py (`with_pipeline_metrics`).

Why hooks on the assets rather than code in each asset, a job's hooks or a run sensor:
- the assets stay thin: none of them knows about Prometheus;
- a hook on the asset runs in every job that materializes it (`make run`'s waves, the
  `ml_phase` job, the UI's "Materialize", the automation sensor's runs), which a job-level hook
  or `make run` code would miss, and it runs in the step, so nothing needs a daemon;
- the failure hook runs when the step fails for good (not on an attempt that will be retried),
  so it sees what a rollback raised;
- Dagster runs hooks after the step's outcome is decided and turns an error in a hook into a
  `HOOK_ERRORED` event, so a push can never fail an asset; this module also catches everything
  and logs a warning.

The values come from the step itself: its output value (`op_output_values`), its config
(`op_config`, for the quality floor), the exception it raised (a rollback says so in its
metadata) and the STEP_START event of the run's log (the duration). What is pushed, and how,
is monitoring/pipeline_metrics.py; where to, the `pipeline_metrics` resource.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from mlops_assets.monitoring.pipeline_metrics import Champion, Materialization

RESOURCE_KEY = "pipeline_metrics"


def _metadata_value(metadata: Mapping[str, Any] | None, key: str) -> Any:
    value = (metadata or {}).get(key)
    return getattr(value, "value", value)


def materialization(asset: str, target: str, *, succeeded: bool, at: float, duration_s: float | None,
                    outputs: Mapping[str, Any], op_config: Mapping[str, Any] | None = None,
                    exception: BaseException | None = None, retraining_period_s: float | None = None) -> Materialization:
    """The plain-value record of one materialization, from what the step produced."""
    from mlops_assets.image.build import ContainerImage
    from mlops_assets.ml.data import Dataset
    from mlops_assets.ml.metrics import HIGHER_IS_BETTER
    from mlops_assets.ml_phase import CandidateSet, SelectedModel
    from mlops_assets.resources.api_deployer import DeployedApi

    facts: dict[str, Any] = {}
    for value in outputs.values():
        if isinstance(value, Dataset):
            facts.update(dataset_rows=value.table.height, class_counts=value.class_counts(), data_version=value.content_hash)
        elif isinstance(value, CandidateSet):
            facts.update(candidates={c.family: dict(c.metrics) for c in value.candidates}, training_reused=value.reused,
                         retraining_period_s=retraining_period_s)
        elif isinstance(value, SelectedModel):
            from mlops_assets.assets.training import SelectedModelConfig

            config = SelectedModelConfig(**{k: v for k, v in (op_config or {}).items() if v is not None})
            facts["champion"] = Champion(
                model_name=value.name, version=str(value.version), family=value.family, test_metrics=dict(value.test_metrics),
                selection_metric=config.selection_metric, quality_floor=config.quality_floor,
                lower_is_better=not HIGHER_IS_BETTER.get(config.selection_metric, True))
        elif isinstance(value, ContainerImage):
            facts["image_size_bytes"] = value.size_bytes if value.ref else None
        elif isinstance(value, DeployedApi):
            facts["deployed_model_version"] = str(value.model_version)
    rolled_back = bool(_metadata_value(getattr(exception, "metadata", None), "rolled_back"))
    return Materialization(asset=asset, target=target, succeeded=succeeded, at=at, duration_s=duration_s,
                           rolled_back=rolled_back and not succeeded, **facts)


def _step_seconds(context: dg.HookContext, now: float) -> float | None:
    """Seconds since the step's (last attempt's) STEP_START in the run's event log."""
    starts = [e.timestamp for e in context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.STEP_START)
              if e.step_key == context.step_key]
    return max(0.0, now - starts[-1]) if starts else None


def _push(context: dg.HookContext, succeeded: bool) -> None:
    try:
        resource = getattr(context.resources, RESOURCE_KEY)
        now = time.time()
        try:
            outputs = context.op_output_values if succeeded else {}
        except Exception:  # noqa: BLE001 - outputs are captured only when a hook is attached
            outputs = {}
        run = materialization(context.op.name, resource.target, succeeded=succeeded, at=now,
                              duration_s=_step_seconds(context, now), outputs=outputs, op_config=context.op_config,
                              exception=None if succeeded else context.op_exception,
                              retraining_period_s=resource.retraining_period_s)
        resource.push(run, context.log)
    except Exception as exc:  # noqa: BLE001 - metrics must never fail an asset
        context.log.warning(f"pipeline metrics of {context.op.name} not pushed: {type(exc).__name__}: {exc}")


@dg.success_hook(name="push_pipeline_metrics_on_success", required_resource_keys={RESOURCE_KEY})
def push_on_success(context: dg.HookContext) -> None:
    _push(context, succeeded=True)


@dg.failure_hook(name="push_pipeline_metrics_on_failure", required_resource_keys={RESOURCE_KEY})
def push_on_failure(context: dg.HookContext) -> None:
    _push(context, succeeded=False)


HOOKS = {push_on_success, push_on_failure}


def with_pipeline_metrics(assets: Iterable) -> list:
    """The assets, each materializable one with the two hooks (observations push nothing)."""
    return [a.with_hooks(HOOKS) if isinstance(a, dg.AssetsDefinition) and a.is_materializable else a for a in assets]
