"""What goes into the API image is checked by content, not by name (docs/security.md, "Supply
chain"): each wheel against the sha256 recorded for it, the image's pip with
`--require-hashes`, and debootstrap against Debian's archive keyring. The image build itself
(with --require-hashes) runs in test_container_image.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_assets.image import context as image_context
from mlops_assets.image import requirements as image_requirements
from mlops_assets.image.context import ContextError

pytestmark = pytest.mark.unit

WHEEL = "demo_pkg-1.0-py3-none-any.whl"
PINS = {"demo-pkg": "1.0"}


def _cache(tmp_path: Path, content: bytes = b"PK\x03\x04 a wheel") -> Path:
    cache = tmp_path / "wheels"
    cache.mkdir()
    (cache / WHEEL).write_bytes(content)
    return cache


def _committed(tmp_path: Path, digest: str) -> Path:
    path = tmp_path / "wheel_hashes.txt"
    image_requirements.write_hashes(path, {WHEEL: digest})
    return path


def test_a_wheel_matching_its_committed_hash_is_used(tmp_path):
    cache = _cache(tmp_path)
    digest = image_context._sha256(cache / WHEEL)
    wheels = image_context.verified_wheels(PINS, cache, committed=_committed(tmp_path, digest))
    assert wheels == {"demo-pkg": (cache / WHEEL, digest)}
    text = image_requirements.hashed_requirements_text(PINS, {"demo-pkg": digest})
    assert f"demo-pkg==1.0 --hash=sha256:{digest}\n" in text


def test_a_wheel_whose_bytes_differ_from_its_recorded_hash_is_refused(tmp_path):
    cache = _cache(tmp_path)
    committed = _committed(tmp_path, image_context._sha256(cache / WHEEL))
    (cache / WHEEL).write_bytes(b"PK\x03\x04 another wheel under the same name")
    with pytest.raises(ContextError, match=rf"the wheel .*{WHEEL} has sha256 [0-9a-f]{{64}}, not the recorded .*changed "
                                           "or replaced. Delete it"):
        image_context.verified_wheels(PINS, cache, committed=committed)


def test_a_cached_wheel_no_record_names_is_refused(tmp_path):
    """Dropped into the cache by someone else: pip did not fetch it here, nothing vouches for it."""
    cache = _cache(tmp_path)
    with pytest.raises(ContextError, match=rf"{WHEEL} has no recorded sha256 .*this pipeline did not fetch it"):
        image_context.verified_wheels(PINS, cache, committed=tmp_path / "none.txt")


def test_the_cache_record_vouches_for_wheels_the_committed_list_lacks(tmp_path):
    cache = _cache(tmp_path)
    digest = image_context._sha256(cache / WHEEL)
    image_requirements.write_hashes(cache / image_context.CACHE_RECORD, {WHEEL: digest})
    assert image_context.verified_wheels(PINS, cache, committed=tmp_path / "none.txt")["demo-pkg"][1] == digest
    (cache / WHEEL).write_bytes(b"PK\x03\x04 swapped")
    with pytest.raises(ContextError, match="not the recorded"):
        image_context.verified_wheels(PINS, cache, committed=tmp_path / "none.txt")


def test_a_malformed_hash_line_is_refused_with_its_place(tmp_path):
    path = tmp_path / "wheel_hashes.txt"
    path.write_text(f"{WHEEL} sha256:abc\n")
    with pytest.raises(ValueError, match=r"wheel_hashes.txt:1 is not `<wheel> sha256:<64 hex>`"):
        image_requirements.read_hashes(path)


def test_the_committed_hashes_are_well_formed():
    hashes = image_requirements.read_hashes(image_requirements.WHEEL_HASHES)
    assert hashes and all(name.endswith(".whl") for name in hashes)


def test_the_image_installs_with_require_hashes_and_only_from_its_wheels():
    dockerfile = image_context.RUNTIME_DOCKERFILE.read_text()
    install = dockerfile[dockerfile.index("pip install"):dockerfile.index("--requirement /build/requirements.txt")]
    assert "--require-hashes" in install and "--no-index" in install
    # The API image installs nothing: it adds code and model on top of that runtime.
    api = image_context.DOCKERFILE.read_text()
    assert "FROM ${RUNTIME_IMAGE}" in api and "pip" not in api.replace("pipeline", "")


def test_debootstrap_checks_signatures_with_debians_keyring(tmp_path):
    from mlops_assets import offline_base

    command = offline_base.debootstrap_command(tmp_path / "rootfs", ("python3",))
    assert command[:2] == ["debootstrap", "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg"]
    with pytest.raises(offline_base.OfflineBaseError, match="archive keyring .* is missing: install debian-archive-keyring"):
        offline_base.debootstrap_command(tmp_path / "rootfs", ("python3",), keyring=tmp_path / "no-keyring.gpg")


@pytest.mark.parametrize("ref, expected", [
    ("python:3.11-slim", ("python", "3.11-slim")),
    ("registry.example:5000/team/base", ("registry.example:5000/team/base", "latest")),
    ("python:3.11-slim@sha256:" + "a" * 64, ("python", "sha256:" + "a" * 64)),
    ("registry.example:5000/base@sha256:" + "b" * 64, ("registry.example:5000/base", "sha256:" + "b" * 64)),
])
def test_image_references_split_for_a_pull_by_tag_or_digest(ref, expected):
    from mlops_assets.resources.container_engine import split_reference

    assert split_reference(ref) == expected


def test_a_base_pulled_from_a_registry_is_used_by_its_digest():
    """The build then names the bytes that were pulled, not a tag the registry can move."""
    from types import SimpleNamespace

    from mlops_assets.resources.container_engine import pinned_by_digest

    digest = "sha256:" + "c" * 64
    pulled = SimpleNamespace(attrs={"RepoDigests": [f"docker.io/library/python@{digest}"]})
    assert pinned_by_digest("python:3.11-slim", pulled) == f"python@{digest}"
    assert pinned_by_digest(f"python:3.11-slim@{digest}", pulled) == f"python:3.11-slim@{digest}"
    local = SimpleNamespace(attrs={"RepoDigests": [f"localhost/mlops-debian-base@{digest}"]})
    assert pinned_by_digest("localhost/mlops-debian-base:bookworm", local) == "localhost/mlops-debian-base:bookworm"
    assert pinned_by_digest("python:3.11-slim", SimpleNamespace(attrs={})) == "python:3.11-slim"
