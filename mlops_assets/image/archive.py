"""Image archives for hosts without a registry, shipped the way a registry would: shared layers once.

A `docker save` archive carries every layer of its image. Every API image is the runtime image
(docker/api-runtime.Dockerfile: the serving stack, about 920 MB) plus a few MB of code and model,
so shipping full archives sends the same 920 MB to the API host for every new model. A registry
sends only the layers a host lacks; without one, `container_image` does the same by hand:

- the runtime image is saved once, as an archive of its own (`api-runtime-<tag>.tar`);
- each API image is saved as a *layered archive*: the same docker-archive (manifest.json, the
  image's config, its RepoTags) without the files of the layers it shares with the runtime.

Loading a layered archive needs those layers on the host already, which the api role ensures by
loading the runtime archive first when the host does not have the runtime image. `docker load`
imports a layer from the archive only when the engine does not have it (it looks each one up by
its chain ID first), so the loaded image is the same image, with the same ID, as a full load.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path


class ArchiveError(RuntimeError):
    """An archive that is not a single-image docker-archive, or not layered on the given base."""


@dataclass(frozen=True)
class LayeredArchive:
    path: Path
    shared_layers: int  # layers left out (the base's)
    own_layers: int  # layers the archive carries
    size_bytes: int


def _manifest_and_config(tar: tarfile.TarFile, where: Path) -> tuple[dict, dict]:
    try:
        manifest = json.load(tar.extractfile("manifest.json"))
        if not isinstance(manifest, list) or len(manifest) != 1:
            raise ArchiveError(f"{where}: expected one image in manifest.json, found {len(manifest)}")
        entry = manifest[0]
        config = json.load(tar.extractfile(entry["Config"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArchiveError(f"{where} is not a docker-archive (`docker save` output): {type(exc).__name__}: {exc}") from None
    if len(entry.get("Layers") or []) != len(config["rootfs"]["diff_ids"]):
        raise ArchiveError(f"{where}: manifest.json lists {len(entry.get('Layers') or [])} layers, "
                           f"the image config {len(config['rootfs']['diff_ids'])}")
    return entry, config


def diff_ids(archive: Path) -> list[str]:
    """The layer digests (uncompressed, `sha256:...`) of the image in a docker-archive, base first."""
    with tarfile.open(archive) as tar:
        _, config = _manifest_and_config(tar, archive)
    return list(config["rootfs"]["diff_ids"])


def write_layered(full: Path, dest: Path, base_diff_ids: list[str]) -> LayeredArchive:
    """Copy the docker-archive `full` to `dest` without the files of the layers it shares with
    the base image (whose layers are `base_diff_ids`, which must be the image's first layers).
    Written beside `dest`, then renamed: never half an archive."""
    partial = dest.with_name(dest.name + ".partial")
    with tarfile.open(full) as source:
        entry, config = _manifest_and_config(source, full)
        image_layers = list(config["rootfs"]["diff_ids"])
        shared = len(base_diff_ids)
        if not base_diff_ids or image_layers[:shared] != list(base_diff_ids) or shared >= len(image_layers):
            raise ArchiveError(f"{full}: the image is not layered on the given base (its first {shared} layers differ, "
                               f"or it has no layer of its own): ship the full archive instead")
        layer_files = [posixpath.normpath(name) for name in entry["Layers"]]
        left_out = set(layer_files[:shared]) - set(layer_files[shared:])
        with tarfile.open(partial, "w") as out:
            for member in source:
                name = posixpath.normpath(member.name)
                # The legacy per-layer folders link to the layer files: a link to a left-out
                # file goes too (Docker reads manifest.json, never these links, when it exists).
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname)) if member.issym() else None
                if name in left_out or target in left_out:
                    continue
                out.addfile(member, source.extractfile(member) if member.isfile() else None)
    partial.replace(dest)
    return LayeredArchive(dest, shared, len(image_layers) - shared, dest.stat().st_size)


def is_complete(archive: Path) -> bool:
    """Whether a docker-archive carries the files of all its image's layers (a layered one does not)."""
    try:
        with tarfile.open(archive) as tar:
            entry, _ = _manifest_and_config(tar, archive)
            names = {posixpath.normpath(name) for name in tar.getnames()}
    except (OSError, tarfile.TarError, ArchiveError):
        return False
    return all(posixpath.normpath(layer) in names for layer in entry["Layers"])
