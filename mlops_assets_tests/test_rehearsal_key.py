"""The rehearsal's SSH key pair (resources/opentofu.py `_ensure_ssh_key`): the private key is
created private from the start, in a private folder, and never written through a file or a
symlink found in its place."""

import os
import stat

import pytest

from mlops_assets.resources.opentofu import _ensure_ssh_key

pytestmark = pytest.mark.unit


def test_the_private_key_is_created_0600_in_a_0700_folder_and_kept(tmp_path):
    old_umask = os.umask(0)  # the most permissive umask: the modes must not depend on it
    try:
        key = _ensure_ssh_key(tmp_path / "ssh")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.with_suffix(".pub").read_text().startswith("ssh-ed25519 ")
    pem = key.read_bytes()
    assert _ensure_ssh_key(tmp_path / "ssh") == key and key.read_bytes() == pem  # reused, not regenerated


def test_a_symlink_planted_in_place_of_the_key_is_not_written_through(tmp_path):
    directory = tmp_path / "ssh"
    directory.mkdir(mode=0o700)
    elsewhere = tmp_path / "someone-elses-file"
    elsewhere.write_text("untouched\n")
    (directory / "id_ed25519").symlink_to(elsewhere)
    key = _ensure_ssh_key(directory)
    assert elsewhere.read_text() == "untouched\n", "the private key was written through the symlink"
    assert not key.is_symlink() and stat.S_IMODE(key.lstat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
