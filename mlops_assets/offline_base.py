"""A Debian 12 base built offline: the root of the API image and of the rehearsal's test hosts.

No container registry is reachable on the project's machines, so no base image can be pulled.
Debian's own package mirror is reachable, so `debootstrap --variant=minbase` builds a root
filesystem (no registry can be reached on the machines this project is built on) that serves two uses:

- the base image `localhost/mlops-debian-base:bookworm` (python3, venv, pip, CA certificates),
  imported into whatever Docker-compatible engine the Python `docker` SDK reaches; the API
  Dockerfile takes it as its `BASE_IMAGE` build argument;
- the root of every rehearsal test host: one more layer on top of the same rootfs with
  openssh-server, sudo, docker.io and what Ansible's modules need on a target, used read-only
  as overlay lower layers by ``mlops_assets/rehearsal/hosts.py``.

Both are cached under a cache folder and rebuilt only when missing or when their package list
changes. Building needs root (debootstrap, chroot, overlay mounts). Command line:
``python -m mlops_assets.offline_base [--image] [--host-layer] [--cache-dir DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
# debootstrap checks the Release file's signature with this keyring (Debian's
# debian-archive-keyring package, installed when missing). Named explicitly: without a
# readable keyring debootstrap only warns and installs unverified packages.
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BASE_IMAGE = f"localhost/mlops-debian-base:{SUITE}"

# What the API image needs to pip-install the serving stack into a venv.
IMAGE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")

# What a rehearsal host needs beyond the image packages. docker.io is pre-installed so that
# the hosts need no network: the `docker` role's install task finds it present (changed=0).
# python3-apt: Ansible's apt module; python3-docker: community.docker modules that still use
# the SDK; tini: the host's PID 1 (reaps orphans, there is no systemd).
HOST_PACKAGES = (
    "openssh-server",
    "sudo",
    "docker.io",
    "python3-apt",
    "python3-docker",
    "tini",
    "iproute2",
    "iptables",
    "procps",
    "curl",
)

# The user Ansible logs in as on the hosts, like Debian's cloud images (`admin`, sudo).
HOST_ADMIN_USER = "admin"
HOST_ADMIN_UID = 1000


class OfflineBaseError(RuntimeError):
    """The offline base could not be built; the message says what to do."""


@dataclass(frozen=True)
class BuildReport:
    path: Path
    built: bool
    seconds: float
    size_bytes: int


def default_cache_dir() -> Path:
    """Outside any state folder on purpose: tests and `make run` share one build per machine."""
    if os.geteuid() == 0:
        return Path("/var/cache/mlops-assets")
    return Path.home() / ".cache" / "mlops-assets"


def base_rootfs_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"base-{SUITE}" / "rootfs"


def host_layer_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"host-layer-{SUITE}" / "upper"


def ensure_base_rootfs(
    cache_dir: Path | None = None, packages: tuple[str, ...] = IMAGE_PACKAGES, mirror: str | None = None
) -> BuildReport:
    """The debootstrapped rootfs with `packages`, built once (about 40 s, 300 MB)."""
    rootfs = base_rootfs_dir(cache_dir)
    stamp = _stamp(("debootstrap", "verified", SUITE, *sorted(packages)))  # a rootfs built unverified is rebuilt
    with _locked(rootfs.parent):
        if _is_current(rootfs, stamp):
            return BuildReport(rootfs, False, 0.0, _du(rootfs))
        _require_root("debootstrap")
        ensure_machine_tools()
        ensure_debian_keyring()
        started = time.monotonic()
        tmp = rootfs.with_name("rootfs.partial")
        _rmtree(tmp)
        _run(debootstrap_command(tmp, packages, mirror),
             "debootstrap could not build the base rootfs (is Debian's package mirror reachable, and are its "
             f"Release files signed by a key in {DEBIAN_KEYRING}?)")
        # A smaller image and no stale package lists; `apt-get update` in a Dockerfile refills them.
        _run(["chroot", str(tmp), "apt-get", "clean"], "apt-get clean in the new rootfs failed")
        for lists in (tmp / "var/lib/apt/lists").glob("*_*"):
            lists.unlink()
        _rmtree(rootfs)
        tmp.rename(rootfs)
        _write_stamp(rootfs, stamp)
        return BuildReport(rootfs, True, time.monotonic() - started, _du(rootfs))


def ensure_host_layer(
    cache_dir: Path | None = None, extra_packages: tuple[str, ...] = ()
) -> tuple[list[Path], BuildReport]:
    """Overlay lower layers (top first) for a rehearsal host's root: host layer over the base.

    The host layer is built as an overlay upper directory over the base rootfs, with apt
    inside a chroot (no daemon is started: policy-rc.d refuses). Afterwards the layer's apt
    sources are removed, so `apt-get update` on a host succeeds offline and `apt install` of
    anything pre-installed reports no change."""
    base = ensure_base_rootfs(cache_dir)
    layer = host_layer_dir(cache_dir)
    packages = tuple(sorted(set(HOST_PACKAGES + extra_packages)))
    stamp = _stamp(("host-layer", (base.path.parent / ".complete").read_text(), *packages))
    with _locked(layer.parent):
        if _is_current(layer, stamp):
            return [layer, base.path], BuildReport(layer, False, 0.0, _du(layer))
        _require_root("building the host layer")
        started = time.monotonic()
        work = layer.parent / "work"
        merged = layer.parent / "merged"
        partial = layer.with_name("upper.partial")
        for path in (partial, work):
            _rmtree(path)
        for path in (partial, work, merged):
            path.mkdir(parents=True, exist_ok=True)
        script = _HOST_LAYER_SCRIPT.format(
            base=base.path, upper=partial, work=work, merged=merged,
            packages=" ".join(packages), user=HOST_ADMIN_USER, uid=HOST_ADMIN_UID,
        )
        # A private mount namespace: every mount of the build vanishes with it, even on a crash.
        _run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", script],
             "building the rehearsal host layer failed")
        _rmtree(work)
        _rmtree(layer)
        partial.rename(layer)
        _write_stamp(layer, stamp)
        return [layer, base.path], BuildReport(layer, True, time.monotonic() - started, _du(layer))


_HOST_LAYER_SCRIPT = r"""
mount -t overlay overlay -o lowerdir={base},upperdir={upper},workdir={work} {merged}
mount -t proc proc {merged}/proc
mount --rbind /dev {merged}/dev
cp /etc/resolv.conf {merged}/etc/resolv.conf
printf '#!/bin/sh\nexit 101\n' > {merged}/usr/sbin/policy-rc.d
chmod 755 {merged}/usr/sbin/policy-rc.d
export DEBIAN_FRONTEND=noninteractive
chroot {merged} apt-get update -qq
chroot {merged} apt-get install -y -qq --no-install-recommends {packages} >/dev/null
chroot {merged} apt-get clean
chroot {merged} useradd --create-home --uid {uid} --shell /bin/bash {user}
echo '{user} ALL=(ALL) NOPASSWD:ALL' > {merged}/etc/sudoers.d/90-{user}
chmod 440 {merged}/etc/sudoers.d/90-{user}
# Each host gets its own SSH host keys from the harness; no host may reach a mirror.
rm -f {merged}/usr/sbin/policy-rc.d {merged}/etc/resolv.conf {merged}/etc/ssh/ssh_host_*
rm -f {merged}/etc/apt/sources.list {merged}/etc/apt/sources.list.d/*
find {merged}/var/lib/apt/lists -maxdepth 1 -type f -name '*_*' -delete
umount -R {merged}/dev
umount {merged}/proc
umount {merged}
"""


def ensure_base_image(
    client=None, tag: str = BASE_IMAGE, cache_dir: Path | None = None
) -> tuple[str, BuildReport]:
    """`tag` in the engine that `client` (a `docker.DockerClient`) talks to, imported from the
    base rootfs when the engine does not have it yet."""
    import docker  # the engine SDK; imported here so the rootfs helpers work without it

    client = client or docker.from_env()
    try:
        image = client.images.get(tag)
        return tag, BuildReport(Path(tag), False, 0.0, image.attrs.get("Size", 0))
    except docker.errors.ImageNotFound:
        pass
    rootfs = ensure_base_rootfs(cache_dir)
    started = time.monotonic()
    repository, _, version = tag.rpartition(":")
    with tempfile.TemporaryDirectory(dir=rootfs.path.parent.parent, prefix="import-") as tmp:
        archive = Path(tmp) / "rootfs.tar"
        _run(["tar", "-C", str(rootfs.path), "--numeric-owner", "-cf", str(archive), "."],
             "could not archive the base rootfs")
        # The Engine API takes "repo:tag" as the repository (Podman ignores a separate tag).
        answer = client.api.import_image_from_file(str(archive), repository=tag)
        _remove_podman_import_leftovers(archive, since=started)
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        image_id = json.loads(answer.strip().splitlines()[-1]).get("id") or ""
        client.api.tag(image_id, repository, version)
        image = client.images.get(tag)
    return tag, BuildReport(Path(tag), True, time.monotonic() - started, image.attrs.get("Size", 0))


def _remove_podman_import_leftovers(archive: Path, since: float) -> None:
    """Podman 4.3's compat import copies the upload to $TMPDIR (default /var/tmp) as
    api_load.tar<random> and never deletes it: 200 MB per import. Remove exactly the copy of
    this archive (same size, written during this call) when the engine runs on this machine."""
    size = archive.stat().st_size
    wall_start = time.time() - (time.monotonic() - since)
    for folder in {Path(os.environ.get("TMPDIR", "/var/tmp")), Path("/var/tmp")}:
        for leftover in folder.glob("api_load.tar*"):
            info = leftover.stat()
            if info.st_size == size and info.st_mtime >= wall_start - 1:
                leftover.unlink(missing_ok=True)


# --- helpers -----------------------------------------------------------------------------------


def _stamp(parts: tuple) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _is_current(path: Path, stamp: str) -> bool:
    marker = path.parent / ".complete"
    return path.is_dir() and marker.is_file() and marker.read_text().strip() == stamp


def _write_stamp(path: Path, stamp: str) -> None:
    (path.parent / ".complete").write_text(stamp + "\n")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One builder at a time per folder: CI, `make run` and several test sessions may race."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def debootstrap_command(target: Path, packages: tuple[str, ...], mirror: str | None = None,
                        keyring: Path = DEBIAN_KEYRING) -> list[str]:
    """debootstrap with the archive signatures checked against Debian's keyring."""
    if not keyring.is_file():
        raise OfflineBaseError(f"Debian's archive keyring {keyring} is missing: install debian-archive-keyring "
                               "(debootstrap would otherwise install packages it cannot verify)")
    cmd = ["debootstrap", f"--keyring={keyring}", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(target)]
    return [*cmd, mirror] if mirror else cmd


def ensure_debian_keyring() -> None:
    if not DEBIAN_KEYRING.is_file():
        _require_root("installing debian-archive-keyring")
        _apt_install_on_machine(["debian-archive-keyring"], probe="")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise OfflineBaseError(f"{what} needs root (debootstrap, chroot and overlay mounts)")


# Commands the builds and the rehearsal hosts run on the machine, and their Debian packages.
MACHINE_TOOLS = {
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "iptables": "iptables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mkfs.ext4": "e2fsprogs",
    "losetup": "mount",
    "unshare": "util-linux",
    "nsenter": "util-linux",
}


def ensure_machine_tools(tools: dict[str, str] = MACHINE_TOOLS) -> None:
    """apt-get install the packages of whichever `tools` (command → package) are missing."""
    missing = sorted({package for command, package in tools.items() if not shutil.which(command)})
    if missing:
        _require_root(f"installing {' '.join(missing)}")
        _apt_install_on_machine(missing, probe="")


def _apt_install_on_machine(packages: list[str], probe: str) -> None:
    if probe and shutil.which(probe):
        return
    if not shutil.which("apt-get"):
        raise OfflineBaseError(f"{probe or packages} missing and there is no apt-get to install it; "
                               f"install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    _run(["apt-get", *lock, "update", "-qq"], "apt-get update failed", env=env)
    _run(["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *packages],
         f"apt-get install {' '.join(packages)} failed", env=env)


def _run(cmd: list[str], message: str, env: dict | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise OfflineBaseError(f"{message}: `{' '.join(cmd[:3])} ...` exited {result.returncode}\n{tail}")


def _rmtree(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def _du(path: Path) -> int:
    result = subprocess.run(["du", "-sb", "--one-file-system", str(path)], capture_output=True, text=True)
    return int(result.stdout.split()[0]) if result.returncode == 0 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"default {default_cache_dir()}")
    parser.add_argument("--image", action="store_true", help=f"import {BASE_IMAGE} into the engine "
                        "that DOCKER_HOST names (default when no option is given)")
    parser.add_argument("--host-layer", action="store_true", help="build the rehearsal hosts' layer")
    args = parser.parse_args(argv)
    if not (args.image or args.host_layer):
        args.image = True
    try:
        base = ensure_base_rootfs(args.cache_dir)
        print(f"base rootfs {base.path}: {'built' if base.built else 'cached'} "
              f"{base.seconds:.1f} s, {base.size_bytes / 1e6:.0f} MB")
        if args.host_layer:
            _, layer = ensure_host_layer(args.cache_dir)
            print(f"host layer {layer.path}: {'built' if layer.built else 'cached'} "
                  f"{layer.seconds:.1f} s, {layer.size_bytes / 1e6:.0f} MB")
        if args.image:
            tag, image = ensure_base_image(cache_dir=args.cache_dir)
            print(f"image {tag}: {'imported' if image.built else 'present'} "
                  f"{image.seconds:.1f} s, {image.size_bytes / 1e6:.0f} MB")
    except OfflineBaseError as error:
        print(f"offline base: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
