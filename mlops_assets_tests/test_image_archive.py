"""Layered image archives (mlops_assets/image/archive.py) on hand-made docker-archives: which
files are left out, what stays, and the archives refused. That `docker load` accepts the result
on a host holding the base is checked against a real Docker in test_ansible_roles.py."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from mlops_assets.image.archive import ArchiveError, diff_ids, write_layered

pytestmark = pytest.mark.unit


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def docker_archive(path, layers: list[bytes], *, legacy_links: bool = True, manifest_images: int = 1):
    """A docker-archive the way Podman writes one: <diff id>.tar layer files, the config
    <digest>.json, manifest.json, and legacy <id>/layer.tar links to the layer files."""
    config = {"rootfs": {"type": "layers", "diff_ids": [f"sha256:{_digest(layer)}" for layer in layers]}}
    config_bytes = json.dumps(config).encode()
    files = {f"{_digest(layer)}.tar": layer for layer in layers}
    files[f"{_digest(config_bytes)}.json"] = config_bytes
    manifest = [{"Config": f"{_digest(config_bytes)}.json", "RepoTags": ["localhost/img:1"],
                 "Layers": [f"{_digest(layer)}.tar" for layer in layers]}] * manifest_images
    files["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if legacy_links:
            for index, layer in enumerate(layers):
                link = tarfile.TarInfo(f"legacy{index}/layer.tar")
                link.type, link.linkname = tarfile.SYMTYPE, f"../{_digest(layer)}.tar"
                tar.addfile(link)
    return config["rootfs"]["diff_ids"]


def names(path) -> set[str]:
    with tarfile.open(path) as tar:
        return set(tar.getnames())


def test_the_layered_archive_leaves_out_exactly_the_base_layers(tmp_path):
    base_layers = [b"base layer one" * 1000, b"base layer two" * 1000]
    own = [b"code and model"]
    ids = docker_archive(tmp_path / "full.tar", base_layers + own)
    result = write_layered(tmp_path / "full.tar", tmp_path / "layered.tar", ids[:2])
    kept = names(tmp_path / "layered.tar")
    assert (result.shared_layers, result.own_layers) == (2, 1)
    assert not any(f"{_digest(layer)}.tar" in kept for layer in base_layers)
    assert f"{_digest(own[0])}.tar" in kept and "manifest.json" in kept
    # The links to left-out files go, the link to the image's own layer stays.
    assert {"legacy0/layer.tar", "legacy1/layer.tar"}.isdisjoint(kept) and "legacy2/layer.tar" in kept
    # The manifest and config are unchanged: the loaded image keeps its name and ID, and lists
    # every layer, the base's included.
    assert diff_ids(tmp_path / "layered.tar") == ids
    with tarfile.open(tmp_path / "layered.tar") as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["RepoTags"] == ["localhost/img:1"]
        assert tar.extractfile(f"{_digest(own[0])}.tar").read() == own[0]
    assert result.size_bytes < (tmp_path / "full.tar").stat().st_size / 2
    assert not list(tmp_path.glob("*.partial"))


def test_an_image_not_built_on_the_base_is_refused_and_nothing_is_written(tmp_path):
    ids = docker_archive(tmp_path / "full.tar", [b"other base", b"own"])
    with pytest.raises(ArchiveError, match="not layered on the given base"):
        write_layered(tmp_path / "full.tar", tmp_path / "layered.tar", ["sha256:" + "0" * 64])
    with pytest.raises(ArchiveError, match="no layer of its own"):  # the base itself
        write_layered(tmp_path / "full.tar", tmp_path / "layered.tar", ids)
    assert not (tmp_path / "layered.tar").exists()


def test_an_archive_that_is_not_one_docker_image_is_refused_with_its_path(tmp_path):
    docker_archive(tmp_path / "two.tar", [b"a", b"b"], manifest_images=2)
    with pytest.raises(ArchiveError, match="expected one image"):
        diff_ids(tmp_path / "two.tar")
    with tarfile.open(tmp_path / "plain.tar", "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ArchiveError, match=r"plain\.tar is not a docker-archive"):
        diff_ids(tmp_path / "plain.tar")


class ArchivingEngine:
    """The two calls `_save_archives` makes of the engine: `image` (present or not) and `save`,
    which writes a docker-archive of the scripted layers."""

    def __init__(self, images: dict[str, list[bytes]]):
        self.images, self.saved = images, []

    def image(self, ref):
        return object() if ref in self.images else None

    def save(self, ref, path):
        self.saved.append(ref)
        docker_archive(path, self.images[ref])
        return path


RUNTIME, API = "mlops-api-runtime:r1", "mlops-api:a1"
LAYERS = {RUNTIME: [b"base" * 500, b"venv" * 5000], API: [b"base" * 500, b"venv" * 5000, b"model"]}


def test_the_runtime_is_saved_once_and_each_image_layered_on_it(tmp_path):
    from mlops_assets.image.archive import is_complete
    from mlops_assets.image.build import _save_archives

    engine, messages = ArchivingEngine(dict(LAYERS)), []
    log = type("Log", (), {"info": messages.append, "warning": messages.append})()
    archive, runtime_archive = _save_archives(engine, API, "a1", RUNTIME, tmp_path, log)
    assert runtime_archive.name == "api-runtime-r1.tar" and is_complete(runtime_archive)
    assert archive.name == "mlops-api-a1.tar" and not is_complete(archive)
    assert diff_ids(archive)[:2] == diff_ids(runtime_archive)
    assert not list(tmp_path.glob("*.full")) and not list(tmp_path.glob("*.partial"))
    # The next model: only its own archive is saved; the previous one is removed.
    engine.images["mlops-api:a2"] = LAYERS[API][:2] + [b"model two"]
    second, again = _save_archives(engine, "mlops-api:a2", "a2", RUNTIME, tmp_path, log)
    assert again == runtime_archive and engine.saved.count(RUNTIME) == 1
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["api-runtime-r1.tar", "mlops-api-a2.tar"]


def test_a_runtime_gone_from_the_engine_means_a_full_archive_with_a_warning(tmp_path):
    from mlops_assets.image.archive import is_complete
    from mlops_assets.image.build import _save_archives

    messages = []
    log = type("Log", (), {"info": messages.append, "warning": messages.append})()
    _save_archives(ArchivingEngine(dict(LAYERS)), API, "a1", RUNTIME, tmp_path, log)  # a layered archive first
    archive, runtime_archive = _save_archives(ArchivingEngine({API: LAYERS[API]}), API, "a1", RUNTIME, tmp_path, log)
    assert runtime_archive is None and is_complete(archive)
    assert any("no longer in the engine" in m for m in messages)
