"""Failure safety of the local target, against the real components: a real MLflow registry, the
session's real Ray Serve instance (serving_fixtures.py) and real Dagster materializations.

- a new version that fails its health check is rolled back, and requests keep being answered;
- a failure before anything is applied leaves the API untouched;
- a candidate that loses the selection or misses the quality floor is never deployed.

A real `cli run` killed midway is the last scenario of test_lazy_rebuilds.py (it reuses that
module's whole local stack instead of starting a cold one of its own).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from .serving_fixtures import Load, as_instances

pytestmark = pytest.mark.service
# The rollouts and rollbacks here do not depend on the engine: they run on ONNX Runtime, what a
# trained champion gets. The broken variants below edit the scikit-learn pipeline and carry no
# engine tag, so their replicas load that pipeline (as for a version registered before
# conversion); one variant edits the ONNX file instead.
SERVING_ENGINES = ("onnx",)


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(trained_home):
    from mlops_assets.ml.data import SplitSpec, build_dataset

    return build_dataset("palmerpenguins", "species", SplitSpec())


@pytest.fixture
def body(test_split):
    return {"instances": as_instances(test_split[0].head(1))}


def _with(resource, **changes):
    """The same resource with other settings (a fresh instance: Dagster re-creates resources
    from their constructor arguments, so a pydantic copy would not carry the changes)."""
    return type(resource)(**{**{name: getattr(resource, name) for name in type(resource).model_fields}, **changes})


@pytest.fixture
def resource(serving_api):
    """The session's API, with short waits: a failing version is given up on quickly."""
    return _with(serving_api.resource, ready_timeout_s=60.0, rollback_timeout_s=180.0)


def _client(serving_api):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=serving_api.tracking_uri, registry_uri=serving_api.tracking_uri)


def _served(resource) -> str:
    ready = resource.readyz()
    assert ready, f"{resource.api_url}/readyz does not answer"
    return ready["model"]["version"]


def _state(resource) -> dict:
    return json.loads((Path(resource.state_dir) / "deployed.json").read_text())


def _register_variant(serving_api, tmp_path: Path, change, tampered: bool = False, engine: str | None = None) -> str:
    """A new registry version holding a copy of the served version's files, changed by
    `change(folder)`, registered with the sha256 manifest of the changed files (as training
    registers it) or, `tampered`, with the manifest of the files before the change (files
    edited after registration); `engine`, when given, is the serving engine recorded for it (as
    selected_model's parity check does; none: scikit-learn). The `champion` alias is not moved."""
    from mlops_assets.serving import model as model_lib
    from mlops_assets.serving import onnx_engine

    served = _served(serving_api.resource)
    source = model_lib.ModelSource(f"models:/{serving_api.model_name}/{served}", serving_api.tracking_uri)
    folder, _, _ = model_lib.download(source, tmp_path / f"variant-{random.randrange(10**6)}")
    before = model_lib.manifest_text(model_lib.files_manifest(folder))
    change(folder)
    manifest = before if tampered else model_lib.manifest_text(model_lib.files_manifest(folder))
    # No run: selected_model's lookups by run (find_version) must never pick these up.
    tags = {model_lib.MANIFEST_TAG: manifest, **({onnx_engine.ENGINE_TAG: engine} if engine else {})}
    return str(_client(serving_api).create_model_version(serving_api.model_name, str(folder), tags=tags).version)


def _unloadable(folder: Path) -> None:
    (folder / "model.skops").write_bytes(b"PK\x03\x04 not a skops archive any more")


def _cannot_predict(folder: Path) -> None:
    """The same pipeline, expecting columns the API never sends: it loads, every predict fails."""
    import numpy as np
    import skops.io
    import yaml

    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]
    path = folder / flavor["pickled_model"]
    pipeline = skops.io.load(path, trusted=flavor.get("skops_trusted_types") or [])
    preprocess = pipeline.steps[0][1]
    preprocess.feature_names_in_ = np.array([f"{name}_renamed" for name in preprocess.feature_names_in_], dtype=object)
    skops.io.dump(pipeline, path)


def _fails_on_missing_values(folder: Path) -> None:
    """The same pipeline, except that a missing category (None) becomes a category its
    encoder refuses: it loads and predicts its own input example (no missing value in it) but
    fails on the real rows with a missing `sex`, which its validation sample holds."""
    import numpy as np
    import skops.io
    import yaml

    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]
    path = folder / flavor["pickled_model"]
    pipeline = skops.io.load(path, trusted=flavor.get("skops_trusted_types") or [])
    categorical = pipeline.steps[0][1].named_transformers_["categorical"]
    imputer, encoder = categorical.named_steps["impute"], categorical.named_steps["encode"]
    imputer.missing_values = None  # the pipeline keeps None as a category of its own; now it is replaced
    imputer.statistics_ = np.array(["__never_seen__"] * len(imputer.statistics_), dtype=object)
    encoder.handle_unknown = "error"
    skops.io.dump(pipeline, path)


def _swapped_after_registration(folder: Path) -> None:
    """Another model file than the one registered (with `tampered=True`): same pipeline, other bytes."""
    _fails_on_missing_values(folder)


def _onnx_swapped_after_registration(folder: Path) -> None:
    """Another ONNX file than the one registered (with `tampered=True`): the graph with one more
    metadata entry, so it still loads; the replicas must refuse it, never fall back to scikit-learn."""
    import onnx

    model = onnx.load_from_string((folder / "model.onnx").read_bytes())
    entry = model.metadata_props.add()
    entry.key, entry.value = "edited", "after registration"
    (folder / "model.onnx").write_bytes(model.SerializeToString())


def _deploy_with_asset(serving_api, trained_home, resource, dataset, version: str):
    """The `deployed_api` asset of the local target, for registry version `version`."""
    from mlops_assets.assets.deployment import deployed_api
    from mlops_assets.resources.api_deployer import RayServeOnThisMachine

    from mlops_assets.serving import model as model_lib

    # The engine selected_model would report for this version: its registry tag.
    _, engine, reason = model_lib.registered_serving(serving_api.tracking_uri, serving_api.model_name, version)
    selected = dataclasses.replace(
        trained_home["selected"], version=version, model_uri=f"models:/{serving_api.model_name}/{version}",
        engine=engine, engine_reason=reason,
    )
    with dg.build_asset_context() as context:  # its temporary instance is closed even on failure
        return deployed_api(
            context=context,
            api_deployer=RayServeOnThisMachine(ray_serve=resource),
            selected_model=selected,
            dataset=dataset,
            container_image=None,
            deployed_hosts=None,
        )


# -- a: a new version that fails its health check ------------------------------------------------
@pytest.mark.parametrize(
    "change, tampered, engine, why",
    [
        (_unloadable, False, None, "could not load model version"),
        (_cannot_predict, False, None, "cannot predict its own input example"),
        (_swapped_after_registration, True, None, "do not match the sha256 manifest recorded when it was logged "
                                                  "(changed since it was logged: model.skops)"),
        # An ONNX file edited after registration is refused like a skops one: a file that fails
        # the manifest is never a reason to fall back to the pipeline.
        (_onnx_swapped_after_registration, True, "onnx", "do not match the sha256 manifest recorded when it was "
                                                         "logged (changed since it was logged: model.onnx)"),
    ],
    ids=["unloadable-artifacts", "predict-fails", "tampered-files", "tampered-onnx"],
)
def test_a_version_the_replicas_refuse_is_rolled_back_and_no_request_fails(
    serving_api, trained_home, resource, dataset, body, tmp_path, change, tampered, engine, why
):
    before_state, served = _state(resource), _served(resource)
    assert before_state["version"] == served
    broken = _register_variant(serving_api, tmp_path, change, tampered=tampered, engine=engine)

    failure, load, seconds = _deploy_under_load(serving_api, trained_home, resource, dataset, body, broken)

    message = failure.value.description
    assert f"model version {broken} failed its health check" in message, message
    assert why in message, message
    assert f"rolled back: the API serves version {served} again" in message, message
    assert failure.value.metadata["rolled_back"].value is True
    assert failure.value.metadata["serving_version"].value == served
    assert failure.value.allow_retries is False  # the same version would fail the same way
    # The replicas never stopped answering with the version in service.
    assert load.total > 20, load.statuses
    assert load.failed == 0, load.statuses
    assert set(load.versions) == {served}, load.versions
    ready = resource.readyz()
    assert ready["model"]["version"] == served and "rejected" not in ready
    assert serving_api.predict(body["instances"]).json()["model"]["version"] == served
    assert _state(resource) == before_state
    print(f"\n{why}: version {broken} rolled back to {served} in {seconds:.1f}s; "
          f"{load.total} requests during the deploy, {load.failed} failed")


def test_a_version_failing_on_real_rows_never_serves_a_request(
    serving_api, trained_home, resource, dataset, tmp_path
):
    """The remaining failure window (issue 11): a model that loads and predicts its own input
    example but fails on real rows. Its replicas predict the validation sample before they take
    traffic and refuse it: not one request fails (before: 678 of 1,640 answered 500 for ~5 s
    until the smoke prediction rolled it back)."""
    import polars as pl

    before_state, served = _state(resource), _served(resource)
    broken = _register_variant(serving_api, tmp_path, _fails_on_missing_values)
    real = dataset.test.filter(pl.col("sex").is_null()).head(1)  # a real row the variant cannot predict
    assert real.height == 1
    body = {"instances": as_instances(real.select(dataset.features).to_pandas())}

    failure, load, seconds = _deploy_under_load(serving_api, trained_home, resource, dataset, body, broken)

    message = failure.value.description
    assert f"model version {broken} failed its health check" in message, message
    assert "cannot predict its validation sample" in message, message
    assert f"rolled back: the API serves version {served} again" in message, message
    assert failure.value.metadata["rolled_back"].value is True
    assert load.total > 20, load.statuses
    assert load.failed == 0, load.statuses
    assert set(load.versions) == {served}, load.versions
    assert resource.readyz()["model"]["version"] == served
    assert serving_api.predict(body["instances"]).json()["model"]["version"] == served
    assert _state(resource) == before_state
    print(f"\nfails on real rows: version {broken} refused and rolled back to {served} in {seconds:.1f}s; "
          f"{load.total} requests during the deploy, {load.failed} failed")


def _deploy_under_load(serving_api, trained_home, resource, dataset, body, version: str):
    """deployed_api materialized with `version` while four clients keep predicting: the
    dg.Failure it must raise, the load's record, and the seconds the deploy took."""
    with Load(f"{serving_api.url}/predict", body, workers=4) as load:
        time.sleep(1)
        started = time.monotonic()
        with pytest.raises(dg.Failure) as failure:
            _deploy_with_asset(serving_api, trained_home, resource, dataset, version)
        seconds = time.monotonic() - started
        time.sleep(1)
    return failure, load, seconds


def _other_signature_unloadable(folder: Path) -> None:
    """Another input schema (the application is rebuilt, new replicas) and files no replica can
    load: the new replicas never get ready."""
    import yaml

    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    mlmodel["signature"]["inputs"] = json.dumps([c for c in inputs if c["name"] != "sex"])
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    _unloadable(folder)


def test_a_version_whose_replicas_never_start_is_rolled_back(
    serving_api, trained_home, resource, dataset, body, tmp_path
):
    before_state, served = _state(resource), _served(resource)
    broken = _register_variant(serving_api, tmp_path, _other_signature_unloadable)
    # Serve gives up after 2 failed starts (its default: 3 per replica, ~10-15 s each here).
    impatient = _with(resource, ready_timeout_s=150.0, replica_start_attempts=2)

    failure, load, seconds = _deploy_under_load(serving_api, trained_home, impatient, dataset, body, broken)

    message = failure.value.description
    assert f"model version {broken} failed its health check (Serve gave up starting the replicas of model " \
           f"version {broken}: " in message, message
    assert "BadZipFile" in message, message
    assert f"rolled back: the API serves version {served} again" in message, message
    assert resource.readyz()["model"]["version"] == served
    assert serving_api.predict(body["instances"]).json()["model"]["version"] == served
    assert _state(resource) == before_state
    # Serve stops only one old replica at a time and keeps the other while new ones fail.
    assert load.failed == 0, load.statuses
    print(f"\nreplicas never start: version {broken} rolled back to {served} in {seconds:.1f}s; "
          f"{load.total} requests during the deploy: {load.statuses}")


def test_a_failure_before_anything_is_applied_leaves_the_api_untouched(
    serving_api, trained_home, resource, dataset, tmp_path
):
    before_state, served = _state(resource), _served(resource)
    holder = {}
    gone = _register_variant(serving_api, tmp_path, lambda folder: holder.update(folder=folder))
    shutil.rmtree(holder["folder"])  # the registered version's files are gone

    with pytest.raises(dg.Failure) as failure:
        _deploy_with_asset(serving_api, trained_home, resource, dataset, gone)

    message = failure.value.description
    assert f"model version {gone} was not deployed" in message, message
    assert f"nothing was applied: the API at {resource.api_url} still serves version {served}, untouched" in message
    assert failure.value.metadata["applied"].value is False
    assert failure.value.allow_retries is True  # a registry or disk hiccup may pass
    assert _served(resource) == served
    assert _state(resource) == before_state
    assert not (Path(resource.state_dir) / "models" / serving_api.model_name / gone).exists()


# The rollback's own failure paths (nothing to roll back to, the rollback failing too, a run
# killed mid-wait) are tested without Ray, over a fake backend, in test_rollout.py.


# -- b: a candidate that loses is never deployed ----------------------------------------------
def _serving_definitions(trained_home, serving_api, storage: Path) -> dg.Definitions:
    """The project's Definitions on the session's registry and API; own IO storage (the
    session's stays as it is); no container engine (container_image: a labelled skip)."""
    from mlops_assets.checks import DATASET_CHECKS
    from mlops_assets.definitions import ASSETS
    from mlops_assets.resources.api_deployer import RayServeOnThisMachine
    from mlops_assets.resources.container_engine import ContainerEngine
    from mlops_assets.targets import resources_for

    resources = resources_for(trained_home["settings"])
    resources.update(
        api_deployer=RayServeOnThisMachine(ray_serve=serving_api.resource),
        io_manager=dg.FilesystemIOManager(base_dir=str(storage)),
        container_engine=ContainerEngine(docker_host=f"unix://{storage}/no-engine.sock", required=False,
                                         images_dir=str(storage / "images")),
    )
    return dg.Definitions(assets=ASSETS, asset_checks=DATASET_CHECKS, resources=resources, executor=dg.in_process_executor)


SERVING_SUBSET = ["dataset", "candidate_models", "selected_model", "container_image", "tofu_state", "deployed_hosts", "deployed_api"]
WEAK_CANDIDATE = {"families": ["logistic_regression"], "logistic_regression": {"C": 0.0001}}


def test_a_candidate_that_loses_or_misses_the_floor_is_never_deployed(serving_api, trained_home, tmp_path):
    from .conftest import materialize
    from .ml_helpers import registry_for

    settings = trained_home["settings"]
    registry = registry_for(settings)
    champion = registry.champion(settings.model_name).version
    served = _served(serving_api.resource)
    assert served == champion, "the session API should serve the champion when this test starts"
    # The champion as the asset deploys it (an earlier test may have switched to it another way,
    # e.g. the registry transport): from here on, the same request must change nothing.
    from mlops_assets.ml.data import SplitSpec, build_dataset

    _deploy_with_asset(serving_api, trained_home, serving_api.resource,
                       build_dataset("palmerpenguins", "species", SplitSpec()), champion)
    before_state = _state(serving_api.resource)
    defs = _serving_definitions(trained_home, serving_api, tmp_path / "storage")

    def events(result, kind):
        return [e for e in result.all_events if e.event_type_value == kind]

    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        # A weaker candidate: registered, not promoted; deployed_api finds nothing to change.
        weak = materialize(defs, instance, SERVING_SUBSET, {
            "ops": {"candidate_models": {"config": WEAK_CANDIDATE}, "selected_model": {"config": {"quality_floor": 0.0}}}
        })
        selected = weak.output_for_node("selected_model")
        assert not selected.promoted and selected.version == champion
        decision = next(
            e.event_specific_data.materialization.metadata["decision"].value
            for e in events(weak, "ASSET_MATERIALIZATION")
            if e.event_specific_data.materialization.asset_key.to_user_string() == "selected_model"
        )
        assert "does not beat champion" in decision
        api = weak.output_for_node("deployed_api")
        assert api.action == "unchanged" and api.model_version == champion

        # A floor no model meets: the blocking check stops everything downstream of it.
        floored = materialize(defs, instance, SERVING_SUBSET, {"ops": {"selected_model": {"config": {"quality_floor": 1.01}}}},
                              raise_on_error=False)
        checks = {e.event_specific_data.check_name: e.event_specific_data for e in events(floored, "ASSET_CHECK_EVALUATION")}
        assert checks["quality_floor"].passed is False
        materialized = {e.event_specific_data.materialization.asset_key.to_user_string() for e in events(floored, "ASSET_MATERIALIZATION")}
        assert "selected_model" in materialized and "deployed_api" not in materialized
        started = {e.step_key for e in events(floored, "STEP_START")}
        assert "deployed_api" not in started

    assert registry.champion(settings.model_name).version == champion
    assert _served(serving_api.resource) == champion
    assert _state(serving_api.resource) == before_state
