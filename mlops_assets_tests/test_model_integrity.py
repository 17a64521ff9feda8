"""Model artifacts are not trusted blindly (docs/security.md, "Model artifacts"): on the session's
real registry, a model version's files are checked against the sha256 manifest registered with
it, skops may hold only the types listed in serving/model.py, pickle is never loaded, and no
path named in MLmodel leaves the model folder; Dagster's own loads go through the same checks.

The edits below are made twice where it matters: once with the registered manifest (the
manifest refuses them) and once with a manifest recomputed over the edited files (as if the
attacker could also set the registry tag): then the check behind it still refuses them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.service

PROBE_MODEL = "integrity-probe"  # registered next to the session's model, never served


@pytest.fixture
def champion(trained_home, tmp_path):
    """(folder, registered manifest) of the session's champion, downloaded into tmp_path."""
    from mlops_assets.serving import model as model_lib

    selected = trained_home["selected"]
    source = model_lib.ModelSource(selected.model_uri, selected.tracking_uri)
    folder, name, version = model_lib.download(source, tmp_path / "download")
    return folder, model_lib.registered_manifest(selected.tracking_uri, name, version)


def _mlmodel(folder: Path) -> dict:
    return yaml.safe_load((folder / "MLmodel").read_text())


def _write_mlmodel(folder: Path, mlmodel: dict) -> None:
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def _recomputed(folder: Path) -> str:
    from mlops_assets.serving import model as model_lib

    return model_lib.manifest_text(model_lib.files_manifest(folder))


def test_a_registered_version_carries_a_manifest_of_its_files_and_its_validation_sample(champion):
    from mlops_assets.serving import model as model_lib

    folder, manifest = champion
    files = json.loads(manifest)
    assert {"MLmodel", "model.skops", model_lib.VALIDATION_SAMPLE} <= set(files), files
    assert "registered_model_meta" not in files  # rewritten by the image build: not hashed
    loaded = model_lib.load_folder(folder, files_sha256=manifest)
    assert loaded.classes == ["Adelie", "Chinstrap", "Gentoo"]
    sample = json.loads((folder / model_lib.VALIDATION_SAMPLE).read_text())
    rows = [dict(zip(sample["columns"], row)) for row in sample["data"]]
    assert {r["island"] for r in rows} == {"Biscoe", "Dream", "Torgersen"}
    assert {r["sex"] for r in rows} == {"male", "female", None}  # the training data's gaps too


def test_the_onnx_file_is_covered_and_served_or_fallen_back_from_with_a_reason(champion, trained_home):
    """The champion's model.onnx is in its manifest; selected_model chose ONNX after its parity
    check (tags); an ONNX file that is absent or does not load gives the pipeline with the
    reason, one that fails the manifest gives nothing."""
    from mlops_assets.serving import model as model_lib
    from mlops_assets.serving import onnx_engine

    folder, manifest = champion
    selected = trained_home["selected"]
    assert onnx_engine.MODEL_FILE in json.loads(manifest)
    _, engine, reason = model_lib.registered_serving(selected.tracking_uri, selected.name, selected.version)
    assert (engine, reason) == ("onnx", "") and selected.engine == "onnx"
    served = model_lib.load_folder(folder, files_sha256=manifest, engine="onnx")
    assert served.engine == "onnx" and served.pipeline is None and served.engine_reason == ""
    assert served.classes == ["Adelie", "Chinstrap", "Gentoo"] and served.categories["island"] == {"Biscoe", "Dream", "Torgersen"}

    (folder / onnx_engine.MODEL_FILE).write_bytes(b"not an onnx graph")
    with pytest.raises(model_lib.ModelIntegrityError, match=r"changed since it was logged: model\.onnx"):
        model_lib.load_folder(folder, files_sha256=manifest, engine="onnx")
    fallen = model_lib.load_folder(folder, files_sha256=_recomputed(folder), engine="onnx")
    assert fallen.engine == "sklearn" and "ONNX Runtime cannot load model.onnx" in fallen.engine_reason
    with pytest.raises(onnx_engine.OnnxModelError, match="cannot load"):
        model_lib.load_folder(folder, files_sha256=_recomputed(folder), engine="onnx", fallback=False)

    (folder / onnx_engine.MODEL_FILE).unlink()
    fallen = model_lib.load_folder(folder, files_sha256=_recomputed(folder), engine="onnx")
    assert fallen.engine == "sklearn" and "has no model.onnx" in fallen.engine_reason
    with pytest.raises(model_lib.ModelSourceError, match="serving engine 'tensorrt'"):
        model_lib.load_folder(folder, files_sha256=_recomputed(folder), engine="tensorrt")


def test_no_manifest_is_refused(champion, monkeypatch):
    from mlops_assets.serving import model as model_lib

    folder, _ = champion
    monkeypatch.delenv(model_lib.MANIFEST_ENV, raising=False)
    with pytest.raises(model_lib.ModelIntegrityError, match="has no sha256 manifest of its files"):
        model_lib.load_folder(folder)


def test_an_edited_trusted_types_list_is_refused(champion):
    from mlops_assets.serving import model as model_lib

    folder, manifest = champion
    mlmodel = _mlmodel(folder)
    mlmodel["flavors"]["sklearn"]["skops_trusted_types"] = [*mlmodel["flavors"]["sklearn"]["skops_trusted_types"],
                                                            "builtins.eval"]
    _write_mlmodel(folder, mlmodel)

    with pytest.raises(model_lib.ModelIntegrityError, match=r"changed since it was logged: MLmodel"):
        model_lib.load_folder(folder, files_sha256=manifest)
    with pytest.raises(model_lib.ModelIntegrityError, match=r"skops_trusted_types outside the allow-list.*builtins\.eval"):
        model_lib.load_folder(folder, files_sha256=_recomputed(folder))


def test_a_swapped_model_file_is_refused(champion, tmp_path):
    """A model.skops that calls os.system when used: refused by its hash, and by its types."""
    import os

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    from mlops_assets.serving import model as model_lib

    folder, manifest = champion
    skops.io.dump(FunctionTransformer(func=os.system), folder / "model.skops")

    with pytest.raises(model_lib.ModelIntegrityError, match=r"changed since it was logged: model\.skops"):
        model_lib.load_folder(folder, files_sha256=manifest)
    with pytest.raises(model_lib.ModelIntegrityError, match=r"holds types outside the allow-list.*system"):
        model_lib.load_folder(folder, files_sha256=_recomputed(folder))


class _Marker:
    """Unpickling this creates a file: the proof that pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickle_format_mlmodel_is_refused_and_never_unpickled(champion, tmp_path):
    import pickle

    from mlops_assets.serving import model as model_lib

    folder, _ = champion
    marker = tmp_path / "unpickled"
    (folder / "model.pkl").write_bytes(pickle.dumps(_Marker(str(marker))))
    for serialization in ("cloudpickle", "pickle"):
        mlmodel = _mlmodel(folder)
        mlmodel["flavors"]["sklearn"].update(serialization_format=serialization, pickled_model="model.pkl")
        _write_mlmodel(folder, mlmodel)
        with pytest.raises(model_lib.ModelIntegrityError, match=f"uses serialization '{serialization}'; only skops"):
            model_lib.load_folder(folder, files_sha256=_recomputed(folder))
    assert not marker.exists()


def test_a_path_escaping_the_folder_is_refused(champion, tmp_path):
    from mlops_assets.serving import model as model_lib

    folder, _ = champion
    outside = tmp_path / "outside.skops"
    shutil.copy(folder / "model.skops", outside)
    mlmodel = _mlmodel(folder)
    mlmodel["flavors"]["sklearn"]["pickled_model"] = "../../outside.skops"
    _write_mlmodel(folder, mlmodel)
    with pytest.raises(model_lib.ModelIntegrityError, match=r"pickled_model names '\.\./\.\./outside\.skops', a path "
                                                            r"outside the model folder"):
        model_lib.load_folder(folder, files_sha256=_recomputed(folder))

    # The same through a symlink inside the folder.
    mlmodel["flavors"]["sklearn"]["pickled_model"] = "model.skops"
    _write_mlmodel(folder, mlmodel)
    (folder / "model.skops").unlink()
    (folder / "model.skops").symlink_to(outside)
    with pytest.raises(model_lib.ModelIntegrityError, match=r"model\.skops is a symlink"):
        model_lib.load_folder(folder, files_sha256=json.dumps({"MLmodel": "0" * 64}))

    # And a manifest naming a file outside (the manifest is data too).
    (folder / "model.skops").unlink()
    shutil.copy(outside, folder / "model.skops")
    escaping = {**json.loads(_recomputed(folder)), "../outside.skops": "0" * 64}
    with pytest.raises(model_lib.ModelIntegrityError, match=r"the manifest of .* names '\.\./outside\.skops', a path outside"):
        model_lib.load_folder(folder, files_sha256=json.dumps(escaping))


def test_dagsters_loads_check_the_registered_manifest(trained_home, champion):
    """registry.load_model (selected_model's scoring) goes through the same loader: a registered
    version whose stored files were swapped is refused, never handed to scikit-learn."""
    from mlflow import MlflowClient

    from mlops_assets.serving import model as model_lib

    from .ml_helpers import registry_for

    folder, manifest = champion
    settings = trained_home["settings"]
    registry = registry_for(settings)
    client = MlflowClient(tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri)
    try:
        client.get_registered_model(PROBE_MODEL)
    except Exception:
        client.create_registered_model(PROBE_MODEL)
    version = client.create_model_version(PROBE_MODEL, str(folder), tags={model_lib.MANIFEST_TAG: manifest}).version
    assert registry.load_model(f"models:/{PROBE_MODEL}/{version}").predict is not None

    (folder / "model.skops").write_bytes((folder / "model.skops").read_bytes() + b"\0")
    with pytest.raises(model_lib.ModelIntegrityError, match=r"changed since it was logged: model\.skops"):
        registry.load_model(f"models:/{PROBE_MODEL}/{version}")
