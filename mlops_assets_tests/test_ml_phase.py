"""The ML phase against a real MLflow store and real Dagster materializations."""

import os

import dagster as dg
import mlflow
import numpy as np
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.ml.models import build_pipeline

from .conftest import ML_ASSET_KEYS, make_settings, materialize_ml
from .ml_helpers import count_runs, count_versions, registry_for, stale_keys

pytestmark = pytest.mark.service

BAD_MODEL = {  # a heavily regularised linear model: barely better than guessing
    "ops": {
        "candidate_models": {"config": {"families": ["logistic_regression"], "logistic_regression": {"C": 0.0001}}},
        "selected_model": {"config": {"quality_floor": 0.0}},
    }
}


@pytest.fixture
def home(tmp_path):
    (tmp_path / "dagster").mkdir()
    return tmp_path


@pytest.fixture
def instance(home):
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        yield instance


def _metadata(result, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return events[-1].materialization.metadata


def test_lineage_is_as_declared():
    graph = build_definitions().resolve_asset_graph()
    parents = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys} for key in graph.materializable_asset_keys}
    assert parents["dataset"] == {"dataset_source"}
    assert parents["tracking_server"] == {"tofu_state"}
    assert parents["candidate_models"] == {"dataset", "tracking_server"}
    assert parents["selected_model"] == {"dataset", "candidate_models"}
    for key in ("dataset", "tracking_server", "candidate_models", "selected_model"):
        assert graph.get(dg.AssetKey(key)).code_version


def _mlflow_process_settings() -> tuple:
    return {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}, mlflow.get_tracking_uri(), mlflow.active_run()


def test_phase_registers_a_champion_that_matches_tracking_and_reruns_for_free(home, instance):
    from mlops_assets.resources.mlflow_registry import REUSED_TAG

    settings = make_settings(home)
    registry = registry_for(settings)
    process_settings = _mlflow_process_settings()
    result = materialize_ml(home, instance)
    selected = result.output_for_node("selected_model")
    candidates = result.output_for_node("candidate_models")

    # the parent of the candidates is the Dagster run's MLflow run, opened by dagster-mlflow
    # and ended with the step; MLflow's process-wide settings are left as they were found
    parent = registry.client().get_run(candidates.parent_run_id)
    assert candidates.mlflow_run_id == candidates.parent_run_id
    assert parent.data.tags["dagster_run_id"] == result.run_id
    assert parent.info.run_name == result.job_def.name and parent.info.status == "FINISHED"
    assert _mlflow_process_settings() == process_settings

    # the registry holds the champion the asset reports
    champion = registry.champion(settings.model_name)
    assert champion is not None and champion.version == selected.version == "1"
    assert len(candidates.candidates) == 3

    # metrics in MLflow are the ones the asset reports, for every candidate
    client = registry.client()
    for candidate in candidates.candidates:
        logged = client.get_run(candidate.run_id).data
        assert logged.tags["mlflow.parentRunId"] == candidates.parent_run_id
        for metric in ("accuracy", "f1_macro", "log_loss", "roc_auc"):
            assert logged.metrics[f"val_{metric}"] == pytest.approx(candidate.metrics[metric])
    table = _metadata(result, "candidate_models")["candidates (validation)"].value
    assert all(c.run_id[:8] in table for c in candidates.candidates)

    # the loaded champion predicts exactly what the same pipeline trained in memory predicts
    dataset = result.output_for_node("dataset")
    chosen = next(c for c in candidates.candidates if c.run_id == champion.run_id)
    params = {k: _parse(v) for k, v in chosen.params.items()}
    in_memory = build_pipeline(chosen.family, dataset.numeric_features, dataset.categorical_features, params, seed=42)
    x_train, y_train = dataset.xy("train")
    in_memory.fit(x_train, y_train)
    x_test, _ = dataset.xy("test")
    loaded = registry.load_model(f"models:/{settings.model_name}@champion")
    assert np.array_equal(loaded.predict(x_test), in_memory.predict(x_test))
    assert np.allclose(loaded.predict_proba(x_test), in_memory.predict_proba(x_test))

    # a second materialization with nothing changed trains and registers nothing: its MLflow
    # run (one run, no candidates under it) names the training it reused
    runs, versions = count_runs(registry), count_versions(registry, settings.model_name)
    again = materialize_ml(home, instance)
    reused = again.output_for_node("candidate_models")
    assert reused.reused and reused.parent_run_id == candidates.parent_run_id
    assert count_runs(registry) == runs + 1
    record = registry.client().get_run(reused.mlflow_run_id)
    assert record.data.tags["dagster_run_id"] == again.run_id and record.info.status == "FINISHED"
    assert record.data.tags[REUSED_TAG] == candidates.parent_run_id
    assert count_versions(registry, settings.model_name) == versions
    assert _metadata(again, "selected_model")["new_version_registered"].value is False
    # ... and Dagster sees every asset of the phase as up to date
    assert stale_keys(build_definitions(settings), instance, ML_ASSET_KEYS) == set()


def test_worse_candidates_keep_the_champion_and_better_ones_replace_it(home, instance):
    settings = make_settings(home)
    registry = registry_for(settings)
    first = materialize_ml(home, instance, BAD_MODEL).output_for_node("selected_model")
    assert first.promoted and first.version == "1"
    weak_score = first.test_metrics["f1_macro"]
    assert weak_score < 0.9

    better = materialize_ml(home, instance).output_for_node("selected_model")
    assert better.promoted and better.version == "2"
    assert better.test_metrics["f1_macro"] > weak_score
    assert registry.champion(settings.model_name).version == "2"

    result = materialize_ml(home, instance, BAD_MODEL)
    worse = result.output_for_node("selected_model")
    assert not worse.promoted
    assert worse.version == "2"  # the asset's value stays the champion in service
    assert registry.champion(settings.model_name).version == "2"
    assert "does not beat champion" in _metadata(result, "selected_model")["decision"].value
    # keeping the champion keeps the asset's data version: nothing downstream goes stale
    versions = [
        e.materialization.tags["dagster/data_version"]
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "selected_model"
    ]
    assert versions == [f"{settings.model_name}/2"]


def test_a_champion_registered_before_file_manifests_is_replaced_not_kept(home, instance):
    """Upgrading a home whose champion predates verified model files: the replicas would refuse
    that version forever (no manifest to check), so the next run retrains and promotes the
    candidate even though it does not beat the old champion's score."""
    from mlops_assets.resources.mlflow_registry import MANIFEST_TAG

    settings = make_settings(home)
    registry = registry_for(settings)
    first = materialize_ml(home, instance).output_for_node("selected_model")
    client = registry.client()
    client.delete_model_version_tag(settings.model_name, first.version, MANIFEST_TAG)
    for run in client.search_runs([registry.experiment_id()], f"tags.`{MANIFEST_TAG}` != ''"):
        client.delete_tag(run.info.run_id, MANIFEST_TAG)

    result = materialize_ml(home, instance)
    again = result.output_for_node("selected_model")
    assert not result.output_for_node("candidate_models").reused
    assert again.promoted and again.version != first.version
    champion = registry.champion(settings.model_name)
    assert champion.version == again.version and champion.tags.get(MANIFEST_TAG)
    assert "no comparable champion" in _metadata(result, "selected_model")["decision"].value


def test_a_training_that_fails_ends_its_mlflow_run_failed(home, instance):
    """The step fails (an invalid hyperparameter): the Dagster run's MLflow run is ended
    FAILED, not left running or active in the process, and is never reused."""
    registry = registry_for(make_settings(home))
    config = {"ops": {"candidate_models": {"config": {"families": ["logistic_regression"], "logistic_regression": {"C": -1.0}}}}}
    result = materialize_ml(home, instance, config, raise_on_error=False)
    assert not result.success
    runs = registry.client().search_runs([registry.experiment_id()], f"tags.dagster_run_id = '{result.run_id}'")
    assert [run.info.status for run in runs] == ["FAILED"]
    assert mlflow.active_run() is None


def test_quality_floor_blocks_a_model_that_is_not_good_enough(home, instance):
    settings = make_settings(home)
    config = {"ops": {**BAD_MODEL["ops"], "selected_model": {"config": {"quality_floor": 0.99}}}}
    result = materialize_ml(home, instance, config, raise_on_error=False)
    evaluations = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    floor = next(e for e in evaluations if e.check_name == "quality_floor")
    assert not floor.passed
    assert "below the quality floor" in floor.description
    assert registry_for(settings).champion(settings.model_name) is None


def test_bad_data_blocks_training(home, instance, tmp_path):
    frame = pl.DataFrame({"x": [float(i) for i in range(80)], "label": ["a"] * 75 + ["b"] * 5})
    frame.write_csv(tmp_path / "skewed.csv")
    config = {"ops": {"dataset": {"config": {"source": str(tmp_path / "skewed.csv"), "target_column": "label"}}}}
    result = materialize_ml(home, instance, config, raise_on_error=False)
    checks = {e.event_specific_data.check_name: e.event_specific_data.passed for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks["enough_rows_per_class"] is False
    assert checks["enough_rows"] is True
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"dataset"}  # the blocking check stopped candidate_models
    assert count_runs(registry_for(make_settings(home))) == 0


@pytest.mark.parametrize(
    "source, message",
    [
        ("{tmp}/missing.csv", "does not exist"),
        ("{tmp}/empty.csv", "is empty"),
    ],
)
def test_bad_sources_fail_the_asset_with_the_setting_to_change(home, instance, tmp_path, source, message):
    (tmp_path / "empty.csv").write_bytes(b"")
    config = {"ops": {"dataset": {"config": {"source": source.format(tmp=tmp_path)}}}}
    result = materialize_ml(home, instance, config, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = failure.event_specific_data.error.message + str(failure.event_specific_data.user_failure_data)
    assert message in text and "MLOPS_DATASET" in text


def test_categorical_dataset_with_missing_values_trains_end_to_end(home, instance, tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(10, 2, n)
    label = np.where((colour == "red") | (size > 11), "yes", "no")
    frame = pl.DataFrame({"colour": colour.tolist(), "size": size.tolist(), "shop": rng.choice(["a", "b"], n).tolist(), "label": label.tolist()})
    frame = frame.with_columns(  # knock out 10% of the values of every feature
        *[pl.when(pl.Series(rng.random(n) < 0.1)).then(None).otherwise(pl.col(c)).alias(c) for c in ("colour", "size", "shop")]
    )
    frame.write_parquet(tmp_path / "shop.parquet")
    config = {"ops": {"dataset": {"config": {"source": str(tmp_path / "shop.parquet"), "target_column": "label"}}}}
    result = materialize_ml(home, instance, config)
    dataset = result.output_for_node("dataset")
    assert set(dataset.categorical_features) == {"colour", "shop"}
    selected = result.output_for_node("selected_model")
    assert selected.test_metrics["accuracy"] > 0.8
    model = registry_for(make_settings(home)).load_model(selected.model_uri)
    rows = dataset.test.select(dataset.features).head(3).to_pandas()
    rows.loc[0, "colour"] = None
    rows.loc[1, "size"] = float("nan")
    assert set(model.predict(rows)) <= {"yes", "no"}


def _parse(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return None if value == "None" else value
