"""MLflow tracking and model registry, wrapped once.

Why not dagster-mlflow's `mlflow_tracking` for this: it opens one MLflow run per Dagster run
(keyed on a `dagster_run_id` tag), has no artifact-location option and configures MLflow
through process-wide environment variables. The candidate models need one parent run per
*training* with nested child runs, and a no-change materialization must reuse an earlier
training instead of opening an empty run. This resource keeps dagster-mlflow's tagging
convention (`dagster_run_id`) so runs line up with its users' expectations.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import dagster as dg
from pydantic import PrivateAttr

ROLE_TAG = "mlops.role"
FINGERPRINT_TAG = "mlops.fingerprint"
CHAMPION_ALIAS = "champion"
# serving/model.py MANIFEST_TAG (not imported: loading the definitions must not import numpy)
MANIFEST_TAG = "mlops.files_sha256"


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


class MlflowRegistry(dg.ConfigurableResource):
    """MLflow tracking store and model registry (sqlite under MLOPS_HOME, or a tracking server)."""

    tracking_uri: str
    model_name: str = "mlops-assets-classifier"  # the registered model selected_model registers into
    experiment_name: str = "mlops-assets"
    artifact_root: str | None = None  # only for file-based stores; a server chooses its own
    ui_url: str = "http://127.0.0.1:5000"

    _experiment_id: str | None = PrivateAttr(default=None)

    # -- plumbing ---------------------------------------------------------------------------
    def _mlflow(self):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            client = self.client()
            experiment = client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                location = None
                if self.artifact_root and urlparse(self.tracking_uri).scheme not in ("http", "https"):
                    location = f"file://{self.artifact_root}/{self.experiment_name}"
                experiment_id = client.create_experiment(self.experiment_name, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
            self._experiment_id = experiment_id
        return self._experiment_id

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{self.experiment_id()}/runs/{run_id}"

    def model_version_url(self, name: str, version: str) -> str:
        return f"{self.ui_url}/#/models/{name}/versions/{version}"

    # -- candidate training runs -------------------------------------------------------------
    def find_finished_training(self, fingerprint: str) -> list[LoggedCandidate] | None:
        """The candidates of an earlier training with this exact fingerprint, if one finished."""
        client = self.client()
        parents = client.search_runs(
            [self.experiment_id()],
            filter_string=(
                f"tags.`{ROLE_TAG}` = 'candidate_set' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
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

    def log_training(
        self,
        fingerprint: str,
        dagster_run_id: str,
        trained: list[tuple[str, Any, dict[str, Any], dict[str, float]]],
        input_example,
        pip_requirements: list[str],
        parent_params: dict[str, Any],
        log: logging.Logger | None = None,
        validation_sample: str | None = None,
    ) -> tuple[str, list[LoggedCandidate]]:
        """Log one parent run with a nested run per candidate (params, metrics, model).

        Each model is logged with skops (types checked against the allow-list), with the
        validation sample (JSON, ml/validation.py) beside it, and the sha256 manifest of its
        files, computed from the logged files, as the run's MANIFEST_TAG."""
        import skops.io
        from mlflow.models import infer_signature

        from mlops_assets.serving import model as model_lib

        mlflow = self._mlflow()
        experiment_id = self.experiment_id()
        logged: list[LoggedCandidate] = []
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"candidates-{fingerprint[:8]}",
            tags={
                ROLE_TAG: "candidate_set",
                FINGERPRINT_TAG: fingerprint,
                "dagster_run_id": dagster_run_id,
                "mlops.candidates": str(len(trained)),
            },
        ) as parent:
            mlflow.log_params(parent_params)
            for family, pipeline, params, metrics in trained:
                with mlflow.start_run(
                    experiment_id=experiment_id,
                    run_name=family,
                    nested=True,
                    tags={ROLE_TAG: "candidate", "mlops.family": family, "dagster_run_id": dagster_run_id},
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
                    manifest = self._finish_model_files(info, validation_sample)
                    mlflow.set_tags({"mlops.model_uri": info.model_uri, MANIFEST_TAG: manifest})
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
        return parent.info.run_id, sorted(logged, key=lambda c: c.family)

    def _finish_model_files(self, info, validation_sample: str | None) -> str:
        """Add the validation sample to the logged model and return the manifest of its files,
        hashed from a download of what was stored."""
        from pathlib import Path

        from mlops_assets.serving import model as model_lib

        mlflow = self._mlflow()
        with tempfile.TemporaryDirectory(prefix="mlops-logged-model-") as work:
            if validation_sample is not None:
                sample = Path(work) / model_lib.VALIDATION_SAMPLE
                sample.write_text(validation_sample)
                self.client().log_model_artifact(info.model_id, str(sample))
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=f"{work}/model"))
            return model_lib.manifest_text(model_lib.files_manifest(folder))

    def load_model(self, model_uri: str, files_sha256: str | None = None):
        """The fitted pipeline of a model URI, through the serving loader: its files checked
        against their manifest (given, or the registered version's tag), skops with the
        allowed types only, never pickle, and its validation sample predicted."""
        from mlops_assets.serving import model as model_lib

        source = model_lib.ModelSource(model_uri, self.tracking_uri, files_sha256=files_sha256 or None)
        return model_lib.load(source).pipeline

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
            client.create_registered_model(name, description="Champion classifier of the mlops-assets pipeline")
        if not candidate.files_sha256:
            raise ValueError(f"candidate {candidate.family} (run {candidate.run_id}) has no sha256 manifest; train it again")
        existing = self.find_version(name, candidate.run_id)
        if existing:
            if not existing.tags.get(MANIFEST_TAG):  # registered before versions carried one
                self.tag_version(existing, {MANIFEST_TAG: candidate.files_sha256})
                existing = RegisteredVersion.from_mlflow(client.get_model_version(name, existing.version))
            return existing, False
        # The manifest computed when the files were logged, not re-hashed now.
        version = self._mlflow().register_model(candidate.model_uri, name, tags={**tags, MANIFEST_TAG: candidate.files_sha256})
        return RegisteredVersion.from_mlflow(version), True

    def set_champion(self, version: RegisteredVersion) -> None:
        self.client().set_registered_model_alias(version.name, CHAMPION_ALIAS, version.version)

    def tag_version(self, version: RegisteredVersion, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, key, value)
