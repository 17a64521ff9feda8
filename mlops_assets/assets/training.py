"""`candidate_models` and `selected_model`: train, track in MLflow, register the champion."""


from dataclasses import dataclass
from importlib.metadata import version

import dagster as dg
from pydantic import Field

from mlops_assets.freshness import rebuild_condition
from mlops_assets.metadata import markdown_table
from mlops_assets.ml import metrics as ml_metrics
from mlops_assets.ml import models as ml_models
from mlops_assets.ml import training as ml_training
from mlops_assets.ml.data import Dataset
from mlops_assets.resources import mlflow_registry
from mlops_assets.resources.mlflow_registry import Champion, LoggedCandidate, MlflowRegistry
from mlops_assets.versioning import code_version_of, stable_hash

TRAINING_CODE_VERSION = code_version_of(ml_models, ml_metrics, ml_training, mlflow_registry)

# What a served model needs, written into each MLflow model instead of MLflow's slow inference.
PIP_REQUIREMENTS = [f"{dist}=={version(dist)}" for dist in ("mlflow", "scikit-learn", "skops", "pandas", "numpy")]


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


@dataclass(frozen=True)
class CandidateSet:
    """The `candidate_models` asset's value: the MLflow runs of one training."""

    parent_run_id: str
    fingerprint: str
    candidates: list[LoggedCandidate]
    reused: bool


@dg.asset(
    automation_condition=rebuild_condition(),
    code_version=TRAINING_CODE_VERSION,
    kinds={"scikit-learn", "mlflow"},
    group_name="ml",
    description="One scikit-learn Pipeline per model family, each a nested MLflow run with validation metrics.",
)
def candidate_models(
    context: dg.AssetExecutionContext, config: CandidateModelsConfig, mlflow: MlflowRegistry, dataset: Dataset
) -> dg.Output[CandidateSet]:
    # Training is keyed on (data, hyperparameters, training code): a training that already
    # finished in MLflow with the same key is reused, so a no-change run trains nothing.
    specs = config.specs()
    fingerprint = stable_hash(
        {"data": dataset.content_hash, "specs": specs, "seed": config.seed, "code": TRAINING_CODE_VERSION}
    )
    candidates = mlflow.find_finished_training(fingerprint)
    reused = candidates is not None
    if reused:
        parent_run_id = mlflow.parent_run_id(candidates)
        context.log.info(f"same data, config and code as MLflow run {parent_run_id}: reusing its {len(candidates)} candidates")
    else:
        trained = ml_training.train_candidates(dataset, specs, config.seed, log=context.log)
        x_val, _ = dataset.xy("validation")
        parent_run_id, candidates = mlflow.log_training(
            fingerprint,
            context.run_id,
            trained,
            input_example=x_val.head(5),
            pip_requirements=PIP_REQUIREMENTS,
            parent_params={"dataset_hash": dataset.content_hash, "source": dataset.source, "seed": config.seed},
            log=context.log,
        )
    table = markdown_table(
        ["family", "accuracy", "f1_macro", "roc_auc", "log_loss", "MLflow run"],
        [
            [c.family, *(c.metrics.get(m) for m in ("accuracy", "f1_macro", "roc_auc", "log_loss")), f"[{c.run_id[:8]}]({mlflow.run_url(c.run_id)})"]
            for c in candidates
        ],
    )
    return dg.Output(
        CandidateSet(parent_run_id, fingerprint, candidates, reused),
        data_version=dg.DataVersion(parent_run_id),
        metadata={
            "candidates (validation)": dg.MetadataValue.md(table),
            "mlflow_parent_run": dg.MetadataValue.url(mlflow.run_url(parent_run_id)),
            "reused_training": reused,
            "fingerprint": fingerprint,
        },
    )


class SelectedModelConfig(dg.Config):
    registered_model_name: str | None = Field(
        default=None, description="default: the mlflow resource's model_name (MLOPS_MODEL_NAME, else mlops-assets-classifier)"
    )
    selection_metric: str = Field(default="f1_macro", description="accuracy, f1_macro, roc_auc or log_loss")
    quality_floor: float = Field(
        default=0.8,
        description="Minimum test score of the selection metric (maximum for log_loss) a model needs to serve.",
    )


@dataclass(frozen=True)
class SelectedModel:
    """The `selected_model` asset's value: the registered champion that should be served."""

    name: str
    version: str
    model_uri: str
    run_id: str
    family: str
    test_metrics: dict[str, float]
    features: list[str]
    promoted: bool
    tracking_uri: str = ""  # the registry it is in

    @property
    def champion(self) -> Champion:
        return Champion(self.name, str(self.version), self.model_uri, self.tracking_uri)


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
    context: dg.AssetExecutionContext,
    config: SelectedModelConfig,
    mlflow: MlflowRegistry,
    dataset: Dataset,
    candidate_models: CandidateSet,
):
    metric = config.selection_metric
    model_name = config.registered_model_name or mlflow.model_name
    if metric not in ml_metrics.HIGHER_IS_BETTER:
        raise dg.Failure(f"selected_model config `selection_metric`={metric!r}; use one of {', '.join(ml_metrics.HIGHER_IS_BETTER)}")
    by_family = {c.family: c for c in candidate_models.candidates}
    best = by_family[ml_training.best_by(metric, [(c.family, c.metrics) for c in candidate_models.candidates])]

    # Test metrics recorded at registration are reused when they were measured on this very
    # dataset: a no-change run loads no model.
    x_test, y_test = dataset.xy("test")
    already = mlflow.find_version(model_name, best.run_id)
    candidate_test = (already and already.test_metrics_for(dataset.content_hash)) or ml_metrics.evaluate(
        mlflow.load_model(best.model_uri), x_test, y_test
    )
    champion = mlflow.champion(model_name)
    champion_test = (champion and champion.test_metrics_for(dataset.content_hash)) or _score_champion(
        context, mlflow, champion, x_test, y_test
    )

    registered, created = mlflow.register(
        model_name,
        best,
        tags={"family": best.family, "dataset_hash": dataset.content_hash, **{f"test_{k}": f"{v:.6f}" for k, v in candidate_test.items()}},
    )
    if champion is not None and champion.version == registered.version:
        decision = ml_training.PromotionDecision(False, f"version {registered.version} is already the champion")
    else:
        decision = ml_training.decide_promotion(
            metric, candidate_test[metric], champion_test.get(metric) if champion_test else None, config.quality_floor
        )
    if decision.promote:
        mlflow.set_champion(registered)
        champion, champion_test = registered, candidate_test
    context.log.info(f"{'promoted' if decision.promote else 'kept champion'}: {decision.reason}")

    serving = champion or registered  # with no champion yet, report the candidate (the floor check blocks it)
    serving_metrics = champion_test if champion else candidate_test
    passed = champion is not None and ml_training.meets_floor(metric, serving_metrics[metric], config.quality_floor)
    yield dg.Output(
        SelectedModel(
            name=serving.name,
            version=serving.version,
            model_uri=f"models:/{serving.name}/{serving.version}",
            run_id=serving.run_id,
            family=best.family if serving.version == registered.version else _family_of(mlflow, serving),
            test_metrics=serving_metrics,
            features=dataset.features,
            promoted=decision.promote,
            tracking_uri=mlflow.tracking_uri,
        ),
        data_version=dg.DataVersion(f"{serving.name}/{serving.version}"),
        metadata={
            "champion_version": serving.version,
            "decision": decision.reason,
            "promoted": decision.promote,
            "best_candidate": best.family,
            "candidate_version": registered.version,
            "new_version_registered": created,
            "test metrics (candidate vs champion)": dg.MetadataValue.md(
                markdown_table(
                    ["metric", "candidate", "champion"],
                    [[m, candidate_test.get(m), (champion_test or {}).get(m)] for m in sorted(candidate_test)],
                )
            ),
            "registry": dg.MetadataValue.url(mlflow.model_version_url(serving.name, serving.version)),
        },
    )
    yield dg.AssetCheckResult(
        check_name="quality_floor",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"serving version {serving.version}: test {metric}={serving_metrics[metric]:.4f}, floor {config.quality_floor}"
            if champion
            else f"no model meets the quality floor: {decision.reason}"
        ),
        metadata={"metric": metric, "score": serving_metrics[metric], "floor": config.quality_floor},
    )


def _score_champion(context, mlflow: MlflowRegistry, champion, x_test, y_test) -> dict[str, float] | None:
    """The champion's metrics on today's test split, or None when it cannot score this data
    (for example a new dataset with other columns): then the candidate is judged on the floor."""
    if champion is None:
        return None
    try:
        return ml_metrics.evaluate(mlflow.load_model(f"models:/{champion.name}/{champion.version}"), x_test, y_test)
    except Exception as exc:  # a champion of another schema cannot be compared
        context.log.warning(f"champion version {champion.version} cannot score the current test split: {exc}")
        return None


def _family_of(mlflow: MlflowRegistry, version) -> str:
    return mlflow.client().get_model_version(version.name, version.version).tags.get("family", "unknown")
