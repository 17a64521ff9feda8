"""MLflow tracking and model registry, wrapped once, on dagster-mlflow.

`MlflowRegistry` (resource key `mlflow`) is the typed façade the assets call. The MLflow run
of a Dagster run that trains is the one dagster-mlflow's `mlflow_tracking` resource opens,
configured from this resource's Dagster config (tracking URI, experiment): named after the
Dagster job, tagged `dagster_run_id`, with one nested run per candidate under it. A forced
re-run whose training fingerprint matches an earlier finished training opens its run too,
retrains nothing and records the reused training's run id in it (`REUSED_TAG`).

How the façade uses dagster-mlflow, and why this way:

- `training_run()` initializes `mlflow_tracking` through `dg.build_resources` with the
  step's Dagster run and log, when `candidate_models` starts its work, not as a resource key
  of the Definitions: with the in-process executor, Dagster initializes every resource a step
  of the plan needs when the run starts, and `mlflow_tracking` opens its MLflow run in its
  constructor, so a run whose `candidate_models` is then skipped (a blocking check of
  `dataset` failed) would leave an empty run RUNNING. Runs that do not execute
  `candidate_models` (a no-change `make run`) never reach `training_run()`: they open no
  MLflow run. `selected_model` uses the registry only and opens none either.
- The run is ended with the step's outcome when the step's work finishes: FINISHED, FAILED
  on an exception, KILLED on an interrupt. That is what `end_mlflow_on_run_finished` does,
  which cannot be used as is here: on success it ends the run only when the hooked op is
  the job's last node (`candidate_models` never is: `selected_model` follows it), and as a
  job hook its resource would be initialized in every run of the job.
- `mlflow_tracking` configures MLflow process-wide (the tracking URI, the registry URI and
  the active experiment, as module globals and as the environment variables
  MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI and MLFLOW_EXPERIMENT_ID), and so does MLflow's
  fluent API. Several Dagster runs share a process (`cli run`'s waves, the tests), and
  settings.py reads MLFLOW_TRACKING_URI: every façade call that needs the fluent API runs
  inside `_process_settings_restored()`, which puts all of them back as it found them.
- The experiment is created by the façade before `mlflow_tracking` looks for it, with the
  artifact location of a file-based store (dagster-mlflow has no such option).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import dagster as dg
from pydantic import Field, PrivateAttr

ROLE_TAG = "mlops.role"
FINGERPRINT_TAG = "mlops.fingerprint"
REUSED_TAG = "mlops.reused_run_id"  # on a run that reused an earlier training: that training's run
CANDIDATE_SET = "candidate_set"  # ROLE_TAG of a run that trained (the only role find_finished_training reuses)
REUSED_CANDIDATE_SET = "reused_candidate_set"  # ROLE_TAG of a run that reused one
CHAMPION_ALIAS = "champion"
# serving/model.py MANIFEST_TAG (not imported: loading the definitions must not import numpy)
MANIFEST_TAG = "mlops.files_sha256"
# On a candidate's run: "converted" when its model folder holds model.onnx, else why not.
ONNX_TAG = "mlops.onnx_conversion"


def _onnx_file(pipeline, signature) -> tuple[bytes | None, str]:
    """The pipeline converted to ONNX (ml/onnx_export.py) and the candidate's ONNX_TAG: a
    pipeline that cannot be converted is still logged, served later by scikit-learn."""
    from mlops_assets.ml import onnx_export
    from mlops_assets.serving import model as model_lib

    features = model_lib.features_from_signature(signature.inputs.to_json())
    try:
        return onnx_export.convert(pipeline, features, model_lib.known_categories(pipeline)), "converted"
    except onnx_export.ConversionError as exc:
        return None, f"not converted: {exc}"[:4900]


# Where MLflow keeps its process-wide settings as environment variables (MLflow's fluent API
# and dagster-mlflow's resource set them; _process_settings_restored() puts them back).
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@contextmanager
def _process_settings_restored() -> Iterator[None]:
    """Whatever the block sets of MLflow's process-wide settings (tracking URI, registry URI,
    active experiment, and their environment variables) is put back as it was found."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    tracking_uri, registry_uri = tracking_utils._tracking_uri, registry_utils._registry_uri
    experiment_id = fluent._active_experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(tracking_uri)  # also resets what MLflow derived from it
        registry_utils._registry_uri = registry_uri
        fluent._active_experiment_id = experiment_id
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class TrainingRun:
    """The Dagster run's MLflow run, as dagster-mlflow's `mlflow_tracking` opened it."""

    run_id: str
    experiment_id: str
    tracking: Any  # dagster_mlflow's MlFlow: mlflow's API with the run active


@dataclass(frozen=True)
class LoggedCandidate:
    """One trained candidate as MLflow recorded it."""

    family: str
    run_id: str
    model_uri: str
    params: dict[str, str]
    metrics: dict[str, float]
    files_sha256: str = ""  # the model files' manifest, computed when they were logged


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_mlflow(cls, version) -> "RegisteredVersion":
        return cls(version.name, str(version.version), version.run_id, version.source, dict(version.tags or {}))

    def test_metrics_for(self, dataset_hash: str) -> dict[str, float] | None:
        """Test metrics recorded at registration, if they were measured on this dataset."""
        if self.tags.get("dataset_hash") != dataset_hash:
            return None
        metrics = {k.removeprefix("test_"): float(v) for k, v in self.tags.items() if k.startswith("test_")}
        return metrics or None


@dataclass(frozen=True)
class Champion:
    """A registered model version to serve, and the registry that holds it."""

    name: str
    version: str
    model_uri: str  # models:/NAME/VERSION
    tracking_uri: str
    engine: str = ""  # the engine selected_model chose (ONNX Runtime or scikit-learn); "" unknown


# Tracking URIs whose store is a database server (not sqlite, not a tracking server).
DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mssql")


def shown_uri(uri: str) -> str:
    """`uri` with any password replaced by `***` (database URLs) or its user info dropped."""
    parts = urlparse(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme in DATABASE_SCHEMES:
        import sqlalchemy

        return sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    if "@" in parts.netloc:
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return uri


def store_kind(uri: str) -> str:
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in DATABASE_SCHEMES:
        return "database"
    if scheme in ("http", "https"):
        return "server"
    return scheme or "file"


SERVER_TIMEOUT_S = 10.0


def tracking_password(record: dict) -> str | None:
    """The password of a deployed tracking server's user: its environment variable, else the
    generated, git-ignored file the record names."""
    from pathlib import Path

    env_name, file_name = record.get("password_env"), record.get("password_file")
    if env_name and os.environ.get(str(env_name)):
        return os.environ[str(env_name)]
    if file_name and Path(str(file_name)).is_file():
        return Path(str(file_name)).read_text().strip() or None
    return None


def reach_tracking_server(tracking_uri: str, timeout: float = SERVER_TIMEOUT_S) -> None:
    """One authenticated call to a tracking server (MLFLOW_TRACKING_URI=http(s)://...), with the
    credentials MLflow's client sends (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD),
    then one listing of its proxied artifact store: `dg.Failure` naming the setting to fix when
    the server does not answer, is not an MLflow server, refuses the credentials, or cannot
    reach its bucket. A server that does not proxy artifacts (404 there) is left to MLflow."""
    import requests

    base = tracking_uri.rstrip("/")
    shown = shown_uri(base)
    username, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    auth = (username, password) if username and password else None
    try:
        answer = requests.get(f"{base}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                              auth=auth, timeout=timeout)
    except requests.RequestException as exc:
        from mlops_assets.retries import root_reason

        raise dg.Failure(description=(
            f"MLFLOW_TRACKING_URI ({shown}): the MLflow tracking server does not answer: {root_reason(exc)}. "
            "Check the address and that the server runs (and that this machine may reach its port), "
            "or unset MLFLOW_TRACKING_URI for the local sqlite store")) from None
    if answer.status_code == 401:
        given = "are not set" if auth is None else f"(user {username!r}) were refused"
        raise dg.Failure(description=(
            f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD: the tracking server at {shown} asks for "
            f"basic-auth credentials (HTTP 401) and these {given}. Set both to an account of that server"))
    if answer.status_code == 403:
        raise dg.Failure(description=(
            f"MLFLOW_TRACKING_USERNAME: user {username!r} may not read experiments on {shown} (HTTP 403). "
            "Grant it at least EDIT on the project's experiment and MANAGE on its registered model"))
    try:
        body = answer.json() if answer.ok else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise dg.Failure(description=(
            f"MLFLOW_TRACKING_URI ({shown}): HTTP {answer.status_code} from /api/2.0/mlflow/experiments/search, "
            f"not an MLflow tracking server's answer ({answer.text[:200]!r}). Check the address and the port"))
    try:
        listing = requests.get(f"{base}/api/2.0/mlflow-artifacts/artifacts", auth=auth, timeout=timeout)
    except requests.RequestException:
        return  # it answered a moment ago: MLflow's own retries deal with a blip
    try:
        listed = listing.json()
    except ValueError:
        listed = None
    # A missing bucket is a 404 whose JSON says the listing failed; a server that does not
    # proxy artifacts has no such route (a plain 404 page).
    failed_listing = isinstance(listed, dict) and str(listed.get("message", "")).startswith("Failed to list artifacts")
    if listing.status_code >= 500 or (listing.status_code == 404 and failed_listing):
        raise dg.Failure(description=(
            f"The tracking server at {shown} (MLFLOW_TRACKING_URI) cannot reach its artifact store "
            f"(HTTP {listing.status_code}: {listing.text[:300]!r}). Check the server's --artifacts-destination "
            "(the bucket), that it exists and that the server's host may read and write it"))


class MlflowRegistry(dg.ConfigurableResource):
    """MLflow tracking store and model registry (sqlite under MLOPS_HOME, or a tracking server)."""

    tracking_uri: str
    model_name: str = "mlops-assets-classifier"  # the registered model selected_model registers into
    experiment_name: str = "mlops-assets"
    artifact_root: str | None = None  # only for file-based stores; a server chooses its own
    ui_url: str = "http://127.0.0.1:5000"
    server_record: str | None = Field(
        default=None,
        description="sim/aws: the record of the tracking server the tracking_server asset deployed "
        "(resources/tracking.py). When set, the store is that server, read at run time, with its credentials; "
        "tracking_uri is then only the fallback the record replaces, never used while the record is missing.",
    )

    _experiment_id: str | None = PrivateAttr(default=None)
    _store_reached: bool = PrivateAttr(default=False)
    _server: dict | None = PrivateAttr(default=None)

    # -- where the store is ------------------------------------------------------------------
    def _deployed_server(self) -> dict | None:
        """The deployed server's record (re-read until found: the tracking_server asset writes it
        during the run), with MLflow's basic-auth credentials put where MLflow's client reads
        them (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD). A configured record that is
        missing fails naming the asset to run: never a silent fall back to a local store."""
        if not self.server_record:
            return None
        if self._server is None:
            from mlops_assets.state import StateFile

            known = StateFile(self.server_record).read()
            if not known or not known.get("url"):
                raise dg.Failure(description=(
                    f"no MLflow tracking server is recorded in {self.server_record}: this target trains through the "
                    "server on its monitoring host, which the tracking_server asset deploys. Materialize tracking_server "
                    "(make run does), or set MLFLOW_TRACKING_URI to use another store"))
            password = tracking_password(known)
            if not password:
                raise dg.Failure(description=(
                    f"{known.get('password_env')}: the password of the tracking server's user {known.get('username')!r} "
                    f"is neither in that variable nor in {known.get('password_file')}. Set the variable, or run "
                    "tracking_server again to generate it"))
            os.environ["MLFLOW_TRACKING_USERNAME"] = str(known["username"])
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password
            self._server = known
        return self._server

    @property
    def uri(self) -> str:
        """The tracking (and registry) URI at run time: the deployed server's, else tracking_uri."""
        server = self._deployed_server()
        return str(server["url"]) if server else self.tracking_uri

    @property
    def ui(self) -> str:
        """MLflow's web UI for links: the deployed server's, else ui_url."""
        server = self._deployed_server()
        return str(server["url"]).rstrip("/") if server else self.ui_url

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _fluent(self):
        """MLflow's fluent API pointed at this store, for the block only."""
        import mlflow

        with _process_settings_restored():
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_registry_uri(self.uri)
            yield mlflow

    def client(self):
        from mlflow import MlflowClient

        self._reach_store()
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _reach_store(self) -> None:
        """The store is reached once, with a 10 s timeout, before MLflow's own client, whose
        retries take about 100 s (a database engine) or two minutes (a server's REST calls): a
        store that does not answer, or refuses the credentials, fails the first asset that needs
        it with a message naming the setting to fix, and nothing falls back to a local store."""
        if self._store_reached:
            return
        kind = store_kind(self.uri)
        if kind == "database":
            self._reach_database()
        elif kind == "server":
            reach_tracking_server(self.uri)
        self._store_reached = True

    def _reach_database(self) -> None:
        """A store in a database server (MLFLOW_TRACKING_URI=postgresql://...)."""
        import sqlalchemy

        url = sqlalchemy.engine.make_url(self.uri)
        engine = None
        try:
            engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {})
            with engine.connect():
                pass
        except Exception as exc:
            from mlops_assets.retries import root_reason

            raise dg.Failure(description=(
                f"MLFLOW_TRACKING_URI ({shown_uri(self.uri)}): MLflow cannot reach its database: "
                f"{root_reason(exc)}. Check that the server runs, the database exists and the user may connect, "
                "or unset MLFLOW_TRACKING_URI for the local sqlite store")) from None
        finally:
            if engine is not None:
                engine.dispose()

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            client = self.client()
            experiment = client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                location = None
                if self.artifact_root and urlparse(self.uri).scheme not in ("http", "https"):
                    location = f"file://{self.artifact_root}/{self.experiment_name}"
                try:
                    experiment_id = client.create_experiment(self.experiment_name, artifact_location=location)
                except Exception as exc:
                    # Another pipeline on the same store created it in the meantime: use theirs.
                    if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                        raise
                    experiment_id = client.get_experiment_by_name(self.experiment_name).experiment_id
            else:
                experiment_id = experiment.experiment_id
            self._experiment_id = experiment_id
        return self._experiment_id

    def run_url(self, run_id: str) -> str:
        return f"{self.ui}/#/experiments/{self.experiment_id()}/runs/{run_id}"

    def model_version_url(self, name: str, version: str) -> str:
        return f"{self.ui}/#/models/{name}/versions/{version}"

    # -- candidate training runs -------------------------------------------------------------
    def find_finished_training(self, fingerprint: str) -> list[LoggedCandidate] | None:
        """The candidates of an earlier training with this exact fingerprint, if one finished."""
        client = self.client()
        parents = client.search_runs(
            [self.experiment_id()],
            filter_string=(
                f"tags.`{ROLE_TAG}` = '{CANDIDATE_SET}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
                " and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not parents:
            return None
        parent = parents[0]
        children = client.search_runs(
            [self.experiment_id()],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
        )
        expected = int(parent.data.tags.get("mlops.candidates", "-1"))
        if len(children) != expected:
            return None  # a partial training (killed midway) is not reused
        if not all(run.data.tags.get(MANIFEST_TAG) for run in children):
            return None  # logged before models carried a manifest and a validation sample: train again
        return sorted((self._candidate_from_run(run) for run in children), key=lambda c: c.family)

    def parent_run_id(self, candidates: list[LoggedCandidate]) -> str:
        return self.client().get_run(candidates[0].run_id).data.tags["mlflow.parentRunId"]

    def _candidate_from_run(self, run) -> LoggedCandidate:
        return LoggedCandidate(
            family=run.data.tags["mlops.family"],
            run_id=run.info.run_id,
            model_uri=run.data.tags["mlops.model_uri"],
            params=dict(run.data.params),
            metrics={k.removeprefix("val_"): v for k, v in run.data.metrics.items() if k.startswith("val_")},
            files_sha256=run.data.tags.get(MANIFEST_TAG, ""),
        )

    @contextmanager
    def training_run(self, context: dg.AssetExecutionContext, tags: dict[str, str]) -> Iterator[TrainingRun]:
        """The MLflow run of this Dagster run, opened by dagster-mlflow's `mlflow_tracking`
        (experiment and tracking URI from this resource's config, `dagster_run_id` tag, `tags`
        added) and active for the block; ended FINISHED when the block returns, FAILED when it
        raises, KILLED on an interrupt. MLflow's process-wide settings are restored after."""
        import dagster_mlflow
        from mlflow.entities import RunStatus

        experiment_id = self.experiment_id()  # created first, with the artifact location
        config = {"experiment_name": self.experiment_name, "mlflow_tracking_uri": self.uri, "extra_tags": tags}
        with self._fluent() as mlflow:
            if mlflow.active_run() is not None:  # mlflow_tracking would silently log into it
                raise RuntimeError(f"MLflow run {mlflow.active_run().info.run_id} is still active in this process")
            with dg.build_resources(
                {"mlflow": dagster_mlflow.mlflow_tracking}, instance=context.instance,
                resource_config={"mlflow": {"config": config}}, dagster_run=context.run, log_manager=context.log,
            ) as resources:
                tracking = resources.mlflow
                run = TrainingRun(tracking.active_run().info.run_id, experiment_id, tracking)
                try:
                    yield run
                except KeyboardInterrupt:
                    tracking.end_run(status=RunStatus.to_string(RunStatus.KILLED))
                    raise
                except BaseException:
                    tracking.end_run(status=RunStatus.to_string(RunStatus.FAILED))
                    raise
                tracking.end_run()

    def log_candidates(
        self,
        run: TrainingRun,
        trained: list[tuple[str, Any, dict[str, Any], dict[str, float]]],
        input_example,
        pip_requirements: list[str],
        parent_params: dict[str, Any],
        log: logging.Logger | None = None,
        validation_sample: str | None = None,
    ) -> list[LoggedCandidate]:
        """Log a nested run per candidate (params, metrics, model) under the training run.

        Each model is logged with skops (types checked against the allow-list), with the
        validation sample (JSON, ml/validation.py) beside it, and the sha256 manifest of its
        files, computed from the logged files, as the run's MANIFEST_TAG. The training run
        itself gets `parent_params`."""
        import skops.io
        from mlflow.models import infer_signature

        from mlops_assets.serving import model as model_lib

        mlflow = run.tracking
        logged: list[LoggedCandidate] = []
        mlflow.log_params(parent_params)
        for family, pipeline, params, metrics in trained:
            with mlflow.start_run(
                experiment_id=run.experiment_id,
                run_name=family,
                nested=True,
                tags={ROLE_TAG: "candidate", "mlops.family": family},
            ) as child:
                mlflow.log_params({k: str(v) for k, v in params.items()})
                mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items()})
                signature = infer_signature(input_example, pipeline.predict(input_example))
                trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
                if set(trusted) - model_lib.TRUSTED_TYPES:
                    raise ValueError(
                        f"candidate {family} holds types the serving loader does not allow: "
                        f"{', '.join(sorted(set(trusted) - model_lib.TRUSTED_TYPES))}; review them and add them to "
                        "TRUSTED_TYPES in mlops_assets/serving/model.py"
                    )
                info = mlflow.sklearn.log_model(
                    pipeline,
                    name="model",
                    signature=signature,
                    input_example=input_example,
                    pip_requirements=pip_requirements,
                    serialization_format="skops",
                    skops_trusted_types=trusted,
                )
                onnx_model, onnx_status = _onnx_file(pipeline, signature)
                manifest = self._finish_model_files(info, validation_sample, onnx_model)
                mlflow.set_tags({"mlops.model_uri": info.model_uri, MANIFEST_TAG: manifest, ONNX_TAG: onnx_status})
                if log and onnx_model is None:
                    log.warning(f"candidate {family}: {onnx_status}; it can only be served by scikit-learn")
                if log:
                    log.info(f"logged candidate {family}: {metrics}")
            logged.append(
                LoggedCandidate(
                    family=family,
                    run_id=child.info.run_id,
                    model_uri=info.model_uri,
                    params={k: str(v) for k, v in params.items()},
                    metrics=metrics,
                    files_sha256=manifest,
                )
            )
        return sorted(logged, key=lambda c: c.family)

    def _finish_model_files(self, info, validation_sample: str | None, onnx_model: bytes | None = None) -> str:
        """Add the validation sample (and the ONNX conversion, when there is one) to the logged
        model and return the manifest of its files, hashed from a download of what was stored."""
        from pathlib import Path

        from mlops_assets.serving import model as model_lib
        from mlops_assets.serving import onnx_engine

        import mlflow

        with tempfile.TemporaryDirectory(prefix="mlops-logged-model-") as work:
            extras = {model_lib.VALIDATION_SAMPLE: validation_sample, onnx_engine.MODEL_FILE: onnx_model}
            for file_name, content in extras.items():
                if content is None:
                    continue
                path = Path(work) / file_name
                path.write_bytes(content if isinstance(content, bytes) else content.encode())
                self.client().log_model_artifact(info.model_id, str(path))
            folder = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=info.model_uri, dst_path=f"{work}/model", tracking_uri=self.uri,
                registry_uri=self.uri))
            return model_lib.manifest_text(model_lib.files_manifest(folder))

    def load_model(self, model_uri: str, files_sha256: str | None = None):
        """The fitted pipeline of a model URI, through the serving loader: its files checked
        against their manifest (given, or the registered version's tag), skops with the
        allowed types only, never pickle, and its validation sample predicted."""
        from mlops_assets.serving import model as model_lib

        # The scikit-learn pipeline whatever engine serves the version: metrics are scored on it.
        source = model_lib.ModelSource(model_uri, self.uri, files_sha256=files_sha256 or None, engine="sklearn")
        with _process_settings_restored():  # the loader points MLflow's fluent API at the store
            return model_lib.load(source).pipeline

    def load_both_engines(self, model_uri: str, files_sha256: str):
        """The model of `model_uri` loaded twice from one verified download, as the replicas load
        it: (scikit-learn LoadedModel, ONNX LoadedModel). Raises what the ONNX loader raises
        (OnnxModelError, ModelSourceError) when ONNX cannot serve it."""
        import shutil
        from pathlib import Path

        from mlops_assets.serving import model as model_lib

        destination = Path(tempfile.mkdtemp(prefix="mlops-parity-"))
        try:
            with _process_settings_restored():
                folder, name, version = model_lib.download(model_lib.ModelSource(model_uri, self.uri), destination)
            sklearn = model_lib.load_folder(folder, name, version, files_sha256, engine="sklearn")
            onnx = model_lib.load_folder(folder, name, version, files_sha256, engine="onnx", fallback=False)
            return sklearn, onnx
        finally:
            shutil.rmtree(destination, ignore_errors=True)

    # -- registry ----------------------------------------------------------------------------
    def champion(self, name: str) -> RegisteredVersion | None:
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException:
            return None
        return RegisteredVersion.from_mlflow(version)

    def find_version(self, name: str, run_id: str) -> RegisteredVersion | None:
        """The newest registered version of `name` made from this run, if any."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        except MlflowException:
            return None
        return RegisteredVersion.from_mlflow(max(found, key=lambda v: int(v.version))) if found else None

    def register(self, name: str, candidate: LoggedCandidate, tags: dict[str, str]) -> tuple[RegisteredVersion, bool]:
        """Register the candidate's model, or return the version that already holds it.

        Returns (version, created)."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            client.get_registered_model(name)
        except MlflowException:
            try:
                client.create_registered_model(name, description="Champion classifier of the mlops-assets pipeline")
            except MlflowException as exc:  # another pipeline on the same store created it meanwhile
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        if not candidate.files_sha256:
            raise ValueError(f"candidate {candidate.family} (run {candidate.run_id}) has no sha256 manifest; train it again")
        existing = self.find_version(name, candidate.run_id)
        if existing:
            if not existing.tags.get(MANIFEST_TAG):  # registered before versions carried one
                self.tag_version(existing, {MANIFEST_TAG: candidate.files_sha256})
                existing = RegisteredVersion.from_mlflow(client.get_model_version(name, existing.version))
            return existing, False
        # The manifest computed when the files were logged, not re-hashed now.
        with self._fluent() as mlflow:
            version = mlflow.register_model(candidate.model_uri, name, tags={**tags, MANIFEST_TAG: candidate.files_sha256})
        return RegisteredVersion.from_mlflow(version), True

    def set_champion(self, version: RegisteredVersion) -> None:
        self.client().set_registered_model_alias(version.name, CHAMPION_ALIAS, version.version)

    def tag_version(self, version: RegisteredVersion, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, key, value)
