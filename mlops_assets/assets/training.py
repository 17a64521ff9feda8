"""`candidate_models` and `selected_model`: train, track in MLflow, register the champion.

The work is in ml_phase.py (over the `mlflow` registry resource) and ml/ (pure functions).
"""

import dagster as dg
from pydantic import Field

from mlops_assets import ml_phase
from mlops_assets.freshness import rebuild_condition
from mlops_assets.metadata import markdown_table
from mlops_assets.ml import metrics as ml_metrics
from mlops_assets.ml import models as ml_models
from mlops_assets.ml import training as ml_training
from mlops_assets.ml import validation as ml_validation
from mlops_assets.ml.data import Dataset
from mlops_assets.ml_phase import CandidateSet, SelectedModel
from mlops_assets.resources import mlflow_registry
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.versioning import code_version_of

__all__ = ["CandidateSet", "SelectedModel", "candidate_models", "selected_model"]  # the values live in ml_phase.py

TRAINING_CODE_VERSION = code_version_of(ml_models, ml_metrics, ml_training, ml_validation, ml_phase, mlflow_registry)


class LogisticRegressionParams(dg.Config):
    C: float = 1.0
    max_iter: int = 1000


class RandomForestParams(dg.Config):
    n_estimators: int = 200
    max_depth: int | None = None
    min_samples_leaf: int = 1


class HistGradientBoostingParams(dg.Config):
    learning_rate: float = 0.1
    max_iter: int = 100
    max_leaf_nodes: int = 31


class CandidateModelsConfig(dg.Config):
    families: list[str] = Field(
        default=list(ml_models.FAMILIES), description="Model families to train, each a full scikit-learn Pipeline."
    )
    seed: int = 42
    logistic_regression: LogisticRegressionParams = Field(default_factory=LogisticRegressionParams)
    random_forest: RandomForestParams = Field(default_factory=RandomForestParams)
    hist_gradient_boosting: HistGradientBoostingParams = Field(default_factory=HistGradientBoostingParams)

    def specs(self) -> dict[str, dict]:
        unknown = [f for f in self.families if f not in ml_models.FAMILIES]
        if unknown or not self.families:
            raise dg.Failure(
                f"candidate_models config `families` has {unknown or 'nothing'}; use any of {', '.join(ml_models.FAMILIES)}"
            )
        return {family: getattr(self, family).model_dump() for family in self.families}


@dg.asset(
    automation_condition=rebuild_condition(),
    code_version=TRAINING_CODE_VERSION,
    kinds={"scikit-learn", "mlflow"},
    group_name="ml",
    # The store it logs to: ready first, and a new store means training there.
    deps=["tracking_server"],
    description="One scikit-learn Pipeline per model family, each a nested MLflow run (validation metrics) under the Dagster run's MLflow run.",
)
def candidate_models(
    context: dg.AssetExecutionContext, config: CandidateModelsConfig, mlflow: MlflowRegistry, dataset: Dataset
) -> dg.Output[CandidateSet]:
    # The models to choose from; an identical earlier training (same data, hyperparameters,
    # seed and code) is reused, so a no-change run trains nothing.
    trained = ml_phase.train_or_reuse(mlflow, context, dataset, config.specs(), config.seed, TRAINING_CODE_VERSION)
    table = markdown_table(["family", "accuracy", "f1_macro", "roc_auc", "log_loss", "MLflow run"],
                           ml_phase.candidates_table(trained, mlflow.run_url))
    return dg.Output(trained, data_version=dg.DataVersion(trained.parent_run_id), metadata={
        "candidates (validation)": dg.MetadataValue.md(table),
        "mlflow_parent_run": dg.MetadataValue.url(mlflow.run_url(trained.parent_run_id)),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(trained.mlflow_run_id)),  # this Dagster run's
        "reused_training": trained.reused,
        "fingerprint": trained.fingerprint,
    })


class SelectedModelConfig(dg.Config):
    registered_model_name: str | None = Field(
        default=None, description="default: the mlflow resource's model_name (MLOPS_MODEL_NAME, else mlops-assets-classifier)"
    )
    selection_metric: str = Field(default="f1_macro", description="accuracy, f1_macro, roc_auc or log_loss")
    quality_floor: float = Field(
        default=0.8,
        description="Minimum test score of the selection metric (maximum for log_loss) a model needs to serve.",
    )


QUALITY_FLOOR_CHECK = dg.AssetCheckSpec(
    "quality_floor",
    asset="selected_model",
    blocking=True,
    description="The model in service meets the configured quality floor on the test split.",
)


@dg.asset(
    automation_condition=rebuild_condition(),
    code_version=TRAINING_CODE_VERSION,
    kinds={"mlflow", "scikit-learn"},
    group_name="ml",
    check_specs=[QUALITY_FLOOR_CHECK],
    description="Best candidate by a validation metric, registered; the `champion` alias moves only if it beats the champion on test data.",
)
def selected_model(
    context: dg.AssetExecutionContext, config: SelectedModelConfig, mlflow: MlflowRegistry, dataset: Dataset,
    candidate_models: CandidateSet,
):
    # The model that should serve: never a worse one, and never one below the floor (blocking check).
    metric, floor = config.selection_metric, config.quality_floor
    try:
        done = ml_phase.select_and_promote(mlflow, dataset, candidate_models, config.registered_model_name or mlflow.model_name,
                                           metric, floor, context.log)
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    serving = done.selected
    yield dg.Output(serving, data_version=dg.DataVersion(f"{serving.name}/{serving.version}"), metadata={
        "champion_version": serving.version,
        "decision": done.decision.reason,
        "promoted": done.decision.promote,
        "best_candidate": done.best.family,
        "candidate_version": done.registered.version,
        "new_version_registered": done.created,
        "test metrics (candidate vs champion)": dg.MetadataValue.md(markdown_table(
            ["metric", "candidate", "champion"],
            [[m, done.candidate_test.get(m), (done.champion_test or {}).get(m)] for m in sorted(done.candidate_test)])),
        "registry": dg.MetadataValue.url(mlflow.model_version_url(serving.name, serving.version)),
        "serving_engine": serving.engine,
        **({"serving_engine_reason": serving.engine_reason} if serving.engine_reason else {}),
        **({"candidate_onnx_parity": done.onnx.parity} if done.onnx else {}),
        **({"candidate_onnx_max_probability_difference": done.onnx.max_probability_difference}
           if done.onnx and done.onnx.max_probability_difference is not None else {}),
    })
    score = serving.test_metrics[metric]
    yield dg.AssetCheckResult(
        check_name="quality_floor", passed=done.meets_floor, severity=dg.AssetCheckSeverity.ERROR,
        description=(f"serving version {serving.version}: test {metric}={score:.4f}, floor {floor}" if done.has_champion
                     else f"no model meets the quality floor: {done.decision.reason}"),
        metadata={"metric": metric, "score": score, "floor": floor},
    )
