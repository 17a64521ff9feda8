"""The ML phase over the registry: train the candidates (or reuse an identical training),
then select the best, register it and decide whether it becomes the champion.

`candidate_models` calls `train_or_reuse`, `selected_model` calls `select_and_promote`; both
return plain values the assets turn into outputs and metadata. The pure parts (fitting,
metrics, the promotion rule) are in ml/; MLflow is reached only through the registry resource,
whose `training_run()` is the Dagster run's MLflow run as dagster-mlflow opens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as installed_version
from typing import Any

from mlops_assets.ml import metrics as ml_metrics
from mlops_assets.ml import training as ml_training
from mlops_assets.ml.data import Dataset
from mlops_assets.ml.validation import missing, sample_json, validation_sample
from mlops_assets.resources.mlflow_registry import (
    CANDIDATE_SET,
    FINGERPRINT_TAG,
    MANIFEST_TAG,
    REUSED_CANDIDATE_SET,
    REUSED_TAG,
    ROLE_TAG,
    Champion,
    LoggedCandidate,
    MlflowRegistry,
    RegisteredVersion,
)
from mlops_assets.serving.onnx_engine import ENGINE_REASON_TAG, ENGINE_TAG
from mlops_assets.versioning import stable_hash

# What a served model needs, written into each MLflow model instead of MLflow's slow inference.
PIP_REQUIREMENTS = [f"{dist}=={installed_version(dist)}" for dist in ("mlflow", "scikit-learn", "skops", "pandas", "numpy")]


@dataclass(frozen=True)
class CandidateSet:
    """The `candidate_models` asset's value: the MLflow runs of one training."""

    parent_run_id: str  # the training's run, parent of the candidates' runs (an earlier one when reused)
    fingerprint: str
    candidates: list[LoggedCandidate]
    reused: bool
    mlflow_run_id: str = ""  # the MLflow run of the Dagster run that produced this value


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
    # The engine that serves it (serving/onnx_engine.py ENGINE_TAG) and, for "sklearn", why not ONNX.
    engine: str = "sklearn"
    engine_reason: str = ""

    @property
    def champion(self) -> Champion:
        return Champion(self.name, str(self.version), self.model_uri, self.tracking_uri, self.engine)


def train_or_reuse(mlflow: MlflowRegistry, context, dataset: Dataset, specs: dict[str, dict], seed: int,
                   code_version: str) -> CandidateSet:
    """Training is keyed on (data, hyperparameters, seed, training code): a training that
    already finished in MLflow with the same key is reused, so a no-change run trains nothing.

    Either way the Dagster run's MLflow run (`mlflow.training_run`) is opened: it is the
    parent of the candidates' runs when it trains, and names the training it reused
    (REUSED_TAG) when it does not. `context` is the asset's execution context."""
    log = context.log
    fingerprint = stable_hash({"data": dataset.content_hash, "specs": specs, "seed": seed, "code": code_version})
    candidates = mlflow.find_finished_training(fingerprint)
    if candidates is not None:
        reused = mlflow.parent_run_id(candidates)
        tags = {ROLE_TAG: REUSED_CANDIDATE_SET, FINGERPRINT_TAG: fingerprint, REUSED_TAG: reused}
        with mlflow.training_run(context, tags) as run:
            log.info(f"same data, config and code as MLflow run {reused}: reusing its {len(candidates)} candidates"
                     f" (recorded in MLflow run {run.run_id})")
        return CandidateSet(reused, fingerprint, candidates, True, run.run_id)
    tags = {ROLE_TAG: CANDIDATE_SET, FINGERPRINT_TAG: fingerprint, "mlops.candidates": str(len(specs))}
    with mlflow.training_run(context, tags) as run:
        trained = ml_training.train_candidates(dataset, specs, seed, log=log)
        x_val, _ = dataset.xy("validation")
        sample = validation_sample(dataset.train, dataset.numeric_features, dataset.categorical_features)
        candidates = mlflow.log_candidates(
            run, trained, input_example=x_val.head(5), pip_requirements=PIP_REQUIREMENTS,
            parent_params={"dataset_hash": dataset.content_hash, "source": dataset.source, "seed": seed}, log=log,
            validation_sample=sample_json(sample),
        )
    return CandidateSet(run.run_id, fingerprint, candidates, False, run.run_id)


@dataclass(frozen=True)
class Selection:
    """What `select_and_promote` decided, and everything the asset reports."""

    selected: SelectedModel
    best: LoggedCandidate
    registered: RegisteredVersion
    created: bool
    decision: ml_training.PromotionDecision
    candidate_test: dict[str, float]
    champion_test: dict[str, float] | None
    has_champion: bool  # a champion serves (False: none yet, and the candidate missed the floor)
    meets_floor: bool  # the model in service meets the floor
    onnx: "EngineDecision | None" = None  # the registered candidate's ONNX parity and engine


def select_and_promote(mlflow: MlflowRegistry, dataset: Dataset, candidates: CandidateSet, model_name: str,
                       metric: str, floor: float, log) -> Selection:
    """The best candidate by `metric`, scored on the test split and registered; the
    `champion` alias moves to it only when it meets the floor and strictly beats the champion
    on the same test data. Raises ValueError for a metric the project does not know."""
    if metric not in ml_metrics.HIGHER_IS_BETTER:
        raise ValueError(f"selected_model config `selection_metric`={metric!r}; use one of {', '.join(ml_metrics.HIGHER_IS_BETTER)}")
    by_family = {c.family: c for c in candidates.candidates}
    best = by_family[ml_training.best_by(metric, [(c.family, c.metrics) for c in candidates.candidates])]
    # Test metrics recorded at registration are reused when they were measured on this very
    # dataset: a no-change run loads no model.
    x_test, y_test = dataset.xy("test")
    already = mlflow.find_version(model_name, best.run_id)
    candidate_test = (already and already.test_metrics_for(dataset.content_hash)) or ml_metrics.evaluate(
        mlflow.load_model(best.model_uri, best.files_sha256), x_test, y_test
    )
    champion = mlflow.champion(model_name)
    if champion is not None and not champion.tags.get(MANIFEST_TAG):
        # Registered before versions carried a manifest of their files: no replica or image
        # build will load it (serving/model.py), so it cannot stay the champion. The candidate
        # is judged on the floor alone, as with no comparable champion.
        log.warning(f"champion version {champion.version} has no {MANIFEST_TAG} tag (registered before model "
                    "files were verified): it cannot be served, so the candidate replaces it if it meets the floor")
        champion_test = None
    else:
        champion_test = (champion and champion.test_metrics_for(dataset.content_hash)) or _score_champion(
            mlflow, champion, x_test, y_test, log
        )
    registered, created = mlflow.register(model_name, best, tags={
        "family": best.family, "dataset_hash": dataset.content_hash,
        **{f"test_{k}": f"{v:.6f}" for k, v in candidate_test.items()},
    })
    onnx = choose_engine(mlflow, registered, best, dataset, log)
    if champion is not None and champion.version == registered.version:
        decision = ml_training.PromotionDecision(False, f"version {registered.version} is already the champion")
    else:
        decision = ml_training.decide_promotion(
            metric, candidate_test[metric], champion_test.get(metric) if champion_test else None, floor
        )
    if decision.promote:
        mlflow.set_champion(registered)
        champion, champion_test = registered, candidate_test
    log.info(f"{'promoted' if decision.promote else 'kept champion'}: {decision.reason}")
    serving = champion or registered  # with no champion yet, report the candidate (the floor check blocks it)
    serving_metrics = champion_test if champion else candidate_test
    selected = SelectedModel(
        name=serving.name, version=serving.version, model_uri=f"models:/{serving.name}/{serving.version}",
        run_id=serving.run_id,
        family=best.family if serving.version == registered.version else _family_of(mlflow, serving),
        test_metrics=serving_metrics, features=dataset.features, promoted=decision.promote,
        tracking_uri=mlflow.uri,
        **_engine_of(mlflow, serving, registered, onnx),
    )
    passed = champion is not None and ml_training.meets_floor(metric, serving_metrics[metric], floor)
    return Selection(selected, best, registered, created, decision, candidate_test, champion_test, champion is not None, passed,
                     onnx)


@dataclass(frozen=True)
class EngineDecision:
    """Which engine serves a registered version, as its tags record it (ENGINE_TAG, ENGINE_REASON_TAG)."""

    engine: str
    reason: str  # why not ONNX ("" when ONNX serves)
    parity: str  # onnx_export.Parity.describe(), or why there is none
    max_probability_difference: float | None
    checked_now: bool  # False: read from the version's tags (a no-change run)


PARITY_DATASET_TAG = "mlops.onnx_parity_dataset"


def choose_engine(mlflow: MlflowRegistry, registered: RegisteredVersion, candidate: LoggedCandidate, dataset: Dataset,
                  log) -> EngineDecision:
    """ONNX Runtime serves the version when its model folder holds an ONNX conversion that
    matches the scikit-learn pipeline on the whole test split and the validation sample (same
    class on every row, probabilities within 1e-4), through the serving loaders themselves;
    else scikit-learn does, with the reason. Recorded as tags of the version; a no-change run
    (same version, same dataset) reads them back and loads nothing. Never raises for a model
    that cannot be converted or misses parity."""
    from mlops_assets.ml import onnx_export

    tags = registered.tags
    if tags.get(ENGINE_TAG) and tags.get(PARITY_DATASET_TAG) == dataset.content_hash:
        difference = tags.get(onnx_export.DIFFERENCE_TAG)
        return EngineDecision(tags[ENGINE_TAG], tags.get(ENGINE_REASON_TAG, ""), tags.get(onnx_export.PARITY_TAG, ""),
                              float(difference) if difference else None, False)
    decision, extra = _check_parity(mlflow, candidate, dataset)
    mlflow.tag_version(registered, {ENGINE_TAG: decision.engine, ENGINE_REASON_TAG: decision.reason,
                                    PARITY_DATASET_TAG: dataset.content_hash, **extra})
    if decision.engine == "onnx":
        log.info(f"version {registered.version} will be served by ONNX Runtime: parity on {decision.parity}")
    else:
        log.warning(f"version {registered.version} will be served by scikit-learn: {decision.reason}")
    return decision


def _check_parity(mlflow: MlflowRegistry, candidate: LoggedCandidate, dataset: Dataset) -> tuple[EngineDecision, dict]:
    from mlops_assets.ml import onnx_export
    from mlops_assets.serving import model as model_lib

    try:
        sklearn, onnx = mlflow.load_both_engines(candidate.model_uri, candidate.files_sha256)
    except model_lib.ModelIntegrityError:
        raise  # tampered files are never a reason to fall back: they must not serve at all
    except Exception as exc:  # not converted, not loadable, failing its self-test
        reason = f"no usable ONNX model: {str(exc)[:400]}"
        return EngineDecision("sklearn", reason, reason, None, True), {}
    x_test, _ = dataset.xy("test")
    sample = validation_sample(dataset.train, dataset.numeric_features, dataset.categorical_features)
    columns = {name: [*_column(x_test[name]), *_column(sample.get_column(name).to_pandas())] for name in dataset.features}
    parity = onnx_export.parity(sklearn, onnx, columns)
    described = f"test split and validation sample, {parity.describe()}"
    if parity.ok:
        return EngineDecision("onnx", "", described, parity.max_probability_difference, True), parity.tags()
    return (EngineDecision("sklearn", f"ONNX parity missed on the {described}", described, parity.max_probability_difference,
                           True), parity.tags())


def _column(series) -> list:
    return [None if missing(v) else v for v in series.tolist()]


def _engine_of(mlflow: MlflowRegistry, serving, registered: RegisteredVersion, onnx: EngineDecision) -> dict[str, str]:
    """The engine of the version that serves: the candidate's decision, or the champion's tags."""
    if serving.version == registered.version:
        return {"engine": onnx.engine, "engine_reason": onnx.reason}
    from mlops_assets.serving import model as model_lib

    _, engine, reason = model_lib.registered_serving(mlflow.uri, serving.name, serving.version)
    return {"engine": engine, "engine_reason": reason}


def _score_champion(mlflow: MlflowRegistry, champion, x_test, y_test, log) -> dict[str, float] | None:
    """The champion's metrics on today's test split, or None when it cannot score this data
    (for example a new dataset with other columns): then the candidate is judged on the floor."""
    if champion is None:
        return None
    try:
        return ml_metrics.evaluate(mlflow.load_model(f"models:/{champion.name}/{champion.version}"), x_test, y_test)
    except Exception as exc:  # a champion of another schema cannot be compared
        log.warning(f"champion version {champion.version} cannot score the current test split: {exc}")
        return None


def _family_of(mlflow: MlflowRegistry, version) -> str:
    return mlflow.client().get_model_version(version.name, version.version).tags.get("family", "unknown")


def candidates_table(candidates: CandidateSet, run_url) -> list[list[Any]]:
    metrics = ("accuracy", "f1_macro", "roc_auc", "log_loss")
    return [[c.family, *(c.metrics.get(m) for m in metrics), f"[{c.run_id[:8]}]({run_url(c.run_id)})"]
            for c in candidates.candidates]
