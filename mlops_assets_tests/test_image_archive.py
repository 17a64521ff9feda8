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
