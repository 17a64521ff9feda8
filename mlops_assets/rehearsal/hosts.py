"""Test hosts for Ansible without a cloud: Debian 12 machines in namespaces, reached by real SSH.

    with TestHosts([("api", "10.213.7.10"), ("monitoring", "10.213.7.11")]) as hosts:
        hosts.ssh("api", "hostname")                    # over SSH, as root
        hosts.exec("api", "cat /etc/os-release")        # nsenter, no SSH
        inventory = hosts.inventory({"api": ["api"], "monitoring": ["monitoring"]})

Each host has:
- its own network namespace, joined by a veth pair to a bridge that this harness creates; the
  bridge has an address on the hosts' subnet so the test runner reaches them. The hosts get no
  default route, and a firewall chain of the harness drops anything the machine would forward
  from or to the bridge: test traffic never leaves the test subnet;
- its own mount, UTS, IPC and PID namespaces, with an overlay root (a per-host upper over the
  cached layers of ``mlops_assets.offline_base``) entered by ``pivot_root`` (a plain chroot
  leaks: `docker exec` inside escaped to the real root);
- no systemd: PID 1 is ``tini`` supervising ``sshd -D``; services are started with SysV
  scripts or ``start-stop-daemon`` (``ansible_service_mgr`` is not ``systemd``);
- its own SSH host key, generated here and written to a private known_hosts, so host-key
  checking stays strict; one client key pair for root and for ``admin`` (passwordless sudo,
  like Debian's cloud images); keys live in a temporary folder, never in the work tree;
- its own cgroup namespace rooted at a cgroup of its own per hierarchy (under the harness's
  cgroup), so the inner dockerd's cgroups live below it and teardown removes them all;
- /var/lib/docker and /var/lib/containerd on a sparse ext4 image (loop device) of its own, so
  the inner dockerd's overlay2 driver never stacks overlay on overlay;
- docker.io pre-installed and no apt sources: hosts need no network beyond the test subnet.

Teardown kills every process of the hosts (their PID namespaces die with PID 1), closes the
SSH control masters, removes cgroups, loop devices, namespaces, veths, the bridge, the
firewall chain and the temporary folder; ``footprint()`` lists whatever is left and is
asserted empty by the tests. ``TestHosts.ensure/attach`` keep hosts across processes (the
rehearsal target); ``reap_stale()`` removes what a killed run left. See docs/targets.md.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlops_assets.offline_base import HOST_ADMIN_UID, HOST_ADMIN_USER, ensure_host_layer, ensure_machine_tools
from mlops_assets.state import StateFile

# A range this harness owns; `free_subnet()` picks an unused /24 in it.
DEFAULT_SUPERNET = ipaddress.ip_network("10.213.0.0/16")
_PRIVATE_BLOCKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class HostsError(RuntimeError):
    """A test host could not be brought up; the message says which and why."""


@dataclass
class Host:
    name: str
    address: str
    netns: str
    veth: str
    dir: Path
    cgroups: list[Path] = field(default_factory=list)  # the host's cgroup per hierarchy
    process: subprocess.Popen | None = None  # `unshare`, when this process started the host
    unshare_pid: int | None = None
    init_pid: int | None = None  # PID 1 of the host, as seen from the machine
    host_public_key: str = ""


@dataclass
class Timings:
    layers_s: float = 0.0
    network_s: float = 0.0
    hosts_s: float = 0.0
    teardown_s: float = 0.0
    per_host_s: dict[str, float] = field(default_factory=dict)


def free_subnet(supernet: ipaddress.IPv4Network = DEFAULT_SUPERNET) -> ipaddress.IPv4Network:
    """A /24 of `supernet` that no route or address on this machine touches and that no other
    live process picked (two test lanes may ask at once, before either bridge exists): the
    pick is reserved for this process's lifetime."""
    _SUBNETS_DIR.mkdir(parents=True, exist_ok=True)
    with open(_SUBNETS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reserved = set()
        for record in _SUBNETS_DIR.glob("subnet-*"):
            try:
                owner = json.loads(record.read_text())
            except (OSError, ValueError):
                owner = {}
            if _alive(owner.get("pid", 0)) and _start_time(owner["pid"]) == owner.get("start"):
                reserved.add(record.name.removeprefix("subnet-"))
            else:
                record.unlink(missing_ok=True)
        used = _routed_networks()
        for candidate in supernet.subnets(new_prefix=24):
            if str(candidate.network_address) in reserved or any(candidate.overlaps(net) for net in used):
                continue
            (_SUBNETS_DIR / f"subnet-{candidate.network_address}").write_text(
                json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
            return candidate
    raise HostsError(f"every /24 of {supernet} is in use on this machine")


class TestHosts:
    """Bring up Debian 12 test hosts at the given addresses; a context manager."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        hosts: list[tuple[str, str]],
        *,
        subnet: str | None = None,
        bridge_address: str | None = None,
        cache_dir: Path | None = None,
        workdir_parent: Path | None = None,
        ready_timeout_s: float = 30.0,
        state_file: Path | None = None,
    ):
        """`state_file`: keep the hosts running after this process exits (a rehearsal target
        whose hosts must outlive one Dagster run); `TestHosts.attach(state_file)` finds them
        again in any process, and its `down()` removes them. Without it, the hosts live as
        long as this object: the context manager, or at the latest this process's exit."""
        if not hosts:
            raise HostsError("TestHosts needs at least one (name, address) pair")
        names = [name for name, _ in hosts]
        if len(set(names)) != len(names):
            raise HostsError(f"host names must be unique: {names}")
        addresses = [ipaddress.ip_address(address) for _, address in hosts]
        if len(set(addresses)) != len(addresses):
            raise HostsError(f"host addresses must be unique: {[str(a) for a in addresses]}")
        self.subnet = ipaddress.ip_network(subnet) if subnet else _covering_network(addresses)
        for address in addresses:
            if address not in self.subnet:
                raise HostsError(f"{address} is not in the test subnet {self.subnet}")
        if not any(self.subnet.subnet_of(block) for block in _PRIVATE_BLOCKS) or self.subnet.prefixlen < 16:
            raise HostsError(
                f"{self.subnet}: test hosts need a private subnet of /16 or smaller inside "
                f"{', '.join(map(str, _PRIVATE_BLOCKS))} (an OpenTofu inventory for the rehearsal "
                "must name private addresses; free_subnet() picks an unused /24)"
            )
        if bridge_address is None:
            bridge_address = str(next(a for a in self.subnet.hosts() if a not in addresses))
        self.bridge_address = bridge_address
        self.cache_dir = cache_dir
        self.workdir_parent = workdir_parent or Path("/var/tmp")
        self.ready_timeout_s = ready_timeout_s
        self.id = secrets.token_hex(3)
        self.bridge = f"mlhbr{self.id}"
        self.chain = f"MLOPS-HOSTS-{self.id}"
        self.hosts: dict[str, Host] = {}
        self._requested = hosts
        self.workdir: Path | None = None
        self.timings = Timings()
        self.state_file = Path(state_file) if state_file else None

    # --- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> TestHosts:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        if os.geteuid() != 0:
            raise HostsError("test hosts need root (namespaces, mounts, bridges)")
        ensure_machine_tools()
        started = time.monotonic()
        self.lowers, _ = ensure_host_layer(self.cache_dir)
        self.timings.layers_s = time.monotonic() - started

        reap_stale()
        self._check_subnet_is_free()
        _STATE_DIR.mkdir(parents=True, exist_ok=True)
        (_STATE_DIR / self.id).write_text(json.dumps(
            {"owner": os.getpid(), "owner_start": _start_time(os.getpid()),
             "workdir_parent": str(self.workdir_parent),
             "state_file": str(self.state_file) if self.state_file else None}))
        self.workdir = Path(tempfile.mkdtemp(prefix=f"mlops-hosts-{self.id}-", dir=self.workdir_parent))
        os.chmod(self.workdir, 0o700)
        atexit.register(self.down)  # until up() succeeds, even for hosts that outlive us
        for sub in ("keys", "cp", "hosts"):
            (self.workdir / sub).mkdir(mode=0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mlops-test-{self.id}",
              "-f", str(self.key_file)])

        started = time.monotonic()
        self._network_up()
        self.timings.network_s = time.monotonic() - started

        started = time.monotonic()
        for index, (name, address) in enumerate(self._requested):
            self.hosts[name] = Host(
                name=name, address=address, netns=f"mlh-{self.id}-{name}",
                veth=f"mlh{self.id}{index}", dir=self.workdir / "hosts" / name,
            )
        for host in self.hosts.values():
            self._start_host(host)
        known = [f"{h.address} {h.host_public_key}" for h in self.hosts.values()]
        self.known_hosts_file.write_text("\n".join(known) + "\n")
        for host in self.hosts.values():
            self._wait_ready(host)
            self.timings.per_host_s[host.name] = time.monotonic() - started
        self.timings.hosts_s = time.monotonic() - started
        if self.state_file:
            StateFile(self.state_file).write(self._state())
            atexit.unregister(self.down)

    @classmethod
    def attach(cls, state_file: Path) -> TestHosts:
        """The hosts that a `TestHosts(..., state_file=state_file)` brought up, maybe in
        another process: ssh, exec, inventory and down work as on the original."""
        state = StateFile(state_file).read()
        if state is None:
            raise FileNotFoundError(f"no rehearsal hosts recorded in {state_file}")
        self = cls.__new__(cls)
        self.id = state["id"]
        self.subnet = ipaddress.ip_network(state["subnet"])
        self.bridge_address = state["bridge_address"]
        self.bridge, self.chain = f"mlhbr{self.id}", f"MLOPS-HOSTS-{self.id}"
        self.cache_dir = None
        self.workdir_parent = Path(state["workdir_parent"])
        self.workdir = Path(state["workdir"])
        self.lowers = [Path(p) for p in state["lowers"]]
        self.ready_timeout_s = 30.0
        self.timings = Timings()
        self.state_file = Path(state_file)
        self._requested = [(h["name"], h["address"]) for h in state["hosts"]]
        self.hosts = {
            h["name"]: Host(name=h["name"], address=h["address"], netns=h["netns"], veth=h["veth"],
                            dir=Path(h["dir"]), cgroups=[Path(c) for c in h["cgroups"]],
                            unshare_pid=h["unshare_pid"], init_pid=h["init_pid"],
                            host_public_key=h["host_public_key"])
            for h in state["hosts"]
        }
        return self

    @classmethod
    def ensure(cls, hosts: list[tuple[str, str]], state_file: Path, **options) -> TestHosts:
        """The hosts recorded in `state_file`, made exactly `hosts` when they all run: the ones
        still listed at the same address are kept as they are (what runs on them goes on), the
        others stopped, new ones brought up on the same bridge (an instance added or removed by
        api_instance_count). When a recorded host is down, a kept host moved, a new address is
        outside the subnet, or no host is kept, everything is brought up anew."""
        state_file = Path(state_file)
        if state_file.exists():
            try:
                existing = cls.attach(state_file)
            except (OSError, ValueError, KeyError):
                state_file.unlink()
            else:
                if existing.running() and existing._can_reshape(hosts):
                    existing.reshape(hosts)
                    return existing
                existing.down()
        fresh = cls(hosts, state_file=state_file, **options)
        try:
            fresh.up()
        except BaseException:
            fresh.down()
            raise
        return fresh

    def _can_reshape(self, hosts: list[tuple[str, str]]) -> bool:
        have, wanted = dict(self._requested), dict(hosts)
        kept = set(have) & set(wanted)
        return (bool(kept) and all(have[name] == wanted[name] for name in kept)
                and all(ipaddress.ip_address(address) in self.subnet for address in wanted.values())
                and ipaddress.ip_address(self.bridge_address) not in {ipaddress.ip_address(a) for a in wanted.values()})

    def reshape(self, hosts: list[tuple[str, str]]) -> None:
        """Stop the hosts no longer in `hosts`, bring up the new ones, keep the others running
        (see ensure)."""
        wanted = dict(hosts)
        for name in [name for name in self.hosts if name not in wanted]:
            _sweep_host(self.id, self.hosts.pop(name))
        started = time.monotonic()
        used = {host.veth for host in self.hosts.values()}
        new = []
        for name, address in hosts:
            if name in self.hosts:
                continue
            index = next(i for i in range(len(used) + len(hosts) + 1) if f"mlh{self.id}{i}" not in used)
            used.add(f"mlh{self.id}{index}")
            host = Host(name=name, address=address, netns=f"mlh-{self.id}-{name}", veth=f"mlh{self.id}{index}",
                        dir=self._require_workdir() / "hosts" / name)
            self.hosts[name] = host
            new.append(host)
        self._requested = list(hosts)
        for host in new:
            self._start_host(host)
        self.known_hosts_file.write_text("".join(f"{h.address} {h.host_public_key}\n" for h in self.hosts.values()))
        for host in new:
            self._wait_ready(host)
        self.timings.hosts_s = time.monotonic() - started if new else 0.0
        if self.state_file:
            StateFile(self.state_file).write(self._state())

    def running(self) -> bool:
        """Every host's PID 1 is alive and its sshd answers."""
        for host in self.hosts.values():
            if not (host.init_pid and _alive(host.init_pid)):
                return False
            try:
                with socket.create_connection((host.address, 22), timeout=2) as conn:
                    if not conn.recv(4).startswith(b"SSH-"):
                        return False
            except OSError:
                return False
        return True

    def _state(self) -> dict:
        return {
            "id": self.id, "subnet": str(self.subnet), "bridge_address": self.bridge_address,
            "workdir_parent": str(self.workdir_parent), "workdir": str(self.workdir),
            "lowers": [str(p) for p in self.lowers],
            "hosts": [
                {"name": h.name, "address": h.address, "netns": h.netns, "veth": h.veth,
                 "dir": str(h.dir), "cgroups": [str(c) for c in h.cgroups],
                 "unshare_pid": h.unshare_pid, "init_pid": h.init_pid,
                 "host_public_key": h.host_public_key}
                for h in self.hosts.values()
            ],
        }

    def down(self) -> None:
        """Undo everything up() did, in reverse; safe to call twice and after a failed up()."""
        if self.workdir is None:
            return
        started = time.monotonic()
        atexit.unregister(self.down)
        self._close_control_masters()
        for host in self.hosts.values():
            # unshare --kill-child: its death SIGKILLs the host's PID 1, and the kernel then
            # kills every process of the host's PID namespace.
            if host.process is not None:
                if host.process.poll() is None:
                    host.process.kill()
                    host.process.wait(timeout=10)
            elif host.unshare_pid and _start_time(host.unshare_pid) and _is_unshare(host.unshare_pid):
                _kill(host.unshare_pid)
            if host.init_pid:
                _wait_gone(host.init_pid)
        _sweep(self.id, self.workdir_parent)
        if self.state_file:
            self.state_file.unlink(missing_ok=True)
        self.workdir = None
        self.timings.teardown_s = time.monotonic() - started

    # --- using the hosts -----------------------------------------------------------------------

    @property
    def key_file(self) -> Path:
        return self._require_workdir() / "keys" / "id_ed25519"

    @property
    def known_hosts_file(self) -> Path:
        return self._require_workdir() / "keys" / "known_hosts"

    @property
    def control_path_dir(self) -> Path:
        return self._require_workdir() / "cp"

    def address(self, name: str) -> str:
        return self.hosts[name].address

    def ssh_options(self) -> list[str]:
        """OpenSSH options that reach only the test hosts: no user config, private known_hosts
        with the hosts' generated keys (strict checking), this harness's key only."""
        return [
            "-F", "/dev/null",
            "-o", f"IdentityFile={self.key_file}",
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_file}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
        ]

    def ssh(self, name: str, command: str, *, user: str = "root", check: bool = True,
            timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
        """Run `command` on host `name` over real SSH (no connection sharing)."""
        host = self.hosts[name]
        cmd = ["ssh", *self.ssh_options(), "-o", "ControlMaster=no", "-o", "ControlPath=none",
               f"{user}@{host.address}", command]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise HostsError(f"ssh {name}: `{command}` exited {result.returncode}\n{result.stderr}{result.stdout}")
        return result

    def exec(self, name: str, command: str, *, check: bool = True, timeout: float = 300,
             input: str | None = None) -> subprocess.CompletedProcess:
        """Run `command` as root inside host `name` through its namespaces (no SSH)."""
        host = self.hosts[name]
        cmd = ["nsenter", f"--target={host.init_pid}", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
               "--root", "--wd=/", "env", "-i", f"PATH={_PATH}", "HOME=/root", "LANG=C.UTF-8",
               "sh", "-c", command]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise HostsError(f"exec {name}: `{command}` exited {result.returncode}\n{result.stderr}{result.stdout}")
        return result

    def copy_in(self, name: str, source: Path, dest: str) -> None:
        """Copy a file of the machine into host `name` at `dest` (e.g. an image archive)."""
        with open(source, "rb") as handle:
            subprocess.run(
                ["nsenter", f"--target={self.hosts[name].init_pid}", "--mount", "--root", "--wd=/",
                 "sh", "-c", f"cat > {shlex.quote(dest)}"],
                stdin=handle, check=True, capture_output=True,
            )

    def start_docker(self, name: str, timeout_s: float = 60) -> float:
        """Start dockerd in host `name` without systemd, the way the `docker` role does on these
        hosts (start-stop-daemon); returns the seconds until `docker info` answered."""
        started = time.monotonic()
        self.exec(name, START_DOCKERD)
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.exec(name, "docker info >/dev/null 2>&1", check=False).returncode == 0:
                return time.monotonic() - started
            time.sleep(0.3)
        log = self.exec(name, "tail -n 30 /var/log/dockerd.log", check=False).stdout
        raise HostsError(f"dockerd did not answer in {name} within {timeout_s:.0f} s:\n{log}")

    def ansible_connection_vars(self, user: str = HOST_ADMIN_USER) -> dict[str, str]:
        """Inventory variables that make Ansible's ssh plugin talk only to these hosts: private
        key, strict host keys against the private known_hosts, and a private ControlPath
        (ControlPersist kept short and every master closed by teardown)."""
        return {
            "ansible_user": user,
            "ansible_become_method": "sudo",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": str(self.key_file),
            "ansible_ssh_args": "-o ControlMaster=auto -o ControlPersist=30s",
            "ansible_pipelining": "true",  # one SSH round trip per task (sudo needs no tty here)
            "ansible_control_path_dir": str(self.control_path_dir),
            "ansible_control_path": "%(directory)s/%%C",  # Ansible %-formats this value
            "ansible_ssh_common_args": " ".join(shlex.quote(o) for o in self.ssh_options()),
            "ansible_host_key_checking": "true",
        }

    def inventory(self, groups: dict[str, list[str]] | None = None, *,
                  user: str = HOST_ADMIN_USER, extra_vars: dict | None = None) -> dict:
        """An ansible-runner inventory (the YAML structure as a dict) naming only these hosts'
        addresses; `groups` maps group name to host names (default: only `all`)."""
        groups = groups or {}
        for members in groups.values():
            unknown = set(members) - set(self.hosts)
            if unknown:
                raise HostsError(f"inventory groups name unknown hosts {sorted(unknown)}")
        return {
            "all": {
                "hosts": {h.name: {"ansible_host": h.address} for h in self.hosts.values()},
                "vars": {**self.ansible_connection_vars(user), **(extra_vars or {})},
                "children": {g: {"hosts": {m: {} for m in members}} for g, members in groups.items()},
            }
        }

    # --- what is left ----------------------------------------------------------------------------

    def footprint(self) -> list[str]:
        """Everything of this harness that exists on the machine now (empty after teardown)."""
        left = _footprint(self.id, self.workdir_parent)
        for host in self.hosts.values():
            if host.init_pid and _alive(host.init_pid):
                left.append(f"process {host.init_pid} (PID 1 of {host.name})")
        return left

    # --- internals -------------------------------------------------------------------------------

    def _require_workdir(self) -> Path:
        if self.workdir is None:
            raise HostsError("the test hosts are not up")
        return self.workdir

    def _check_subnet_is_free(self) -> None:
        for net in _routed_networks():
            if self.subnet.overlaps(net):
                raise HostsError(
                    f"{self.subnet} overlaps {net}, already routed on this machine: test hosts must "
                    f"use a subnet of their own (free_subnet() picks one).{_owner_hint(net)}"
                )

    def _network_up(self) -> None:
        prefix = self.subnet.prefixlen
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.bridge_address}/{prefix}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        # The machine forwards nothing from or to the test bridge (br_netfilter also sends
        # bridged host-to-host frames through FORWARD: those stay allowed).
        _run(["iptables", "-w", "-N", self.chain])
        _run(["iptables", "-w", "-A", self.chain, "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"])
        _run(["iptables", "-w", "-A", self.chain, "-i", self.bridge, "-j", "DROP"])
        _run(["iptables", "-w", "-A", self.chain, "-o", self.bridge, "-j", "DROP"])
        _run(["iptables", "-w", "-I", "FORWARD", "1", "-j", self.chain])

    # --- the sim target's security groups (security_groups.py) -----------------------------------

    @property
    def security_group_chain(self) -> str:
        """The chain that enforces the EC2 emulator's security groups on these hosts."""
        return _security_group_chain(self.id)

    def hook_security_groups(self) -> None:
        """Send the traffic into the hosts through the security-group chain (made first)."""
        for jump in _security_group_jumps(self.id):
            if subprocess.run(["iptables", "-w", "-C", *jump], capture_output=True).returncode != 0:
                _run(["iptables", "-w", "-I", jump[0], "1", *jump[1:]])

    def unhook_security_groups(self) -> None:
        """No security groups: the jumps and the chain gone (idempotent)."""
        _remove_security_group_chain(self.id)

    def _start_host(self, host: Host) -> None:
        started = time.monotonic()
        for sub in ("upper", "work", "root", "scratch"):
            (host.dir / sub).mkdir(parents=True)
        # Docker's data on a file system of its own (a sparse ext4 image on a loop device):
        # overlay2 never stacks on the host's overlay root, and teardown frees an image full of
        # unpacked layers with one unlink instead of tens of thousands (2 ms each on a busy disk).
        image = host.dir / "scratch.img"
        with open(image, "wb") as handle:
            handle.truncate(_SCRATCH_BYTES)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-N", "262144", "-O", "^has_journal",
              "-E", "nodiscard,lazy_itable_init=0", str(image)])
        self._write_host_files(host)

        _run(["ip", "netns", "add", host.netns])
        _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
        _run(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
        inside = ["ip", "netns", "exec", host.netns]
        _run([*inside, "ip", "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0"])
        _run([*inside, "ip", "link", "set", "eth0", "up"])
        _run([*inside, "ip", "link", "set", "lo", "up"])

        host.cgroups = self._make_cgroups(host)
        script = _HOST_INIT.format(
            cgroup_mounts=_cgroup_mount_script(),
            root=host.dir / "root", upper=host.dir / "upper", work=host.dir / "work",
            lower=":".join(str(p) for p in self.lowers), name=host.name,
            scratch=host.dir / "scratch", image=host.dir / "scratch.img", path=_PATH,
        )
        log = open(host.dir / "console.log", "wb")
        # A small shell moves itself into the host's cgroups (they become the host's cgroup
        # root at `unshare --cgroup`), then nsenter joins the prepared network namespace
        # (`unshare --net=FILE` would make a new one and bind it over FILE).
        join_cgroups = " ".join(f"echo $$ > {shlex.quote(str(c / 'cgroup.procs'))};" for c in host.cgroups)
        host.process = subprocess.Popen(
            ["sh", "-ec", join_cgroups + ' exec "$@"', "sh",
             "nsenter", f"--net=/run/netns/{host.netns}", "--",
             "unshare", "--mount", "--uts", "--ipc", "--pid", "--cgroup", "--fork", "--kill-child",
             "--propagation", "private", "sh", "-euc", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        host.unshare_pid = host.process.pid  # the shell execs nsenter, which execs unshare
        deadline = time.monotonic() + 10
        while host.init_pid is None and time.monotonic() < deadline:
            children = Path(f"/proc/{host.process.pid}/task/{host.process.pid}/children")
            try:
                pids = children.read_text().split()
            except OSError:
                pids = []
            if pids:
                host.init_pid = int(pids[0])
            elif host.process.poll() is not None:
                break
            else:
                time.sleep(0.02)
        if host.init_pid is None:
            raise HostsError(f"host {host.name} did not start:\n{self._console(host)}")
        self.timings.per_host_s[host.name] = time.monotonic() - started

    def _write_host_files(self, host: Host) -> None:
        upper = host.dir / "upper"
        self._mkdirs_like_lower(upper, "etc/ssh/sshd_config.d", "root/.ssh",
                                f"home/{HOST_ADMIN_USER}/.ssh")
        hosts_lines = ["127.0.0.1 localhost", f"127.0.1.1 {host.name}"]
        hosts_lines += [f"{address} {name}" for name, address in self._requested]
        (upper / "etc/hostname").write_text(host.name + "\n")
        (upper / "etc/hosts").write_text("\n".join(hosts_lines) + "\n")
        (upper / "etc/resolv.conf").write_text("# rehearsal host: no DNS, no route off the test subnet\n")
        key = upper / "etc/ssh/ssh_host_ed25519_key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key)])
        host.host_public_key = " ".join(key.with_suffix(".pub").read_text().split()[:2])
        (upper / "etc/ssh/sshd_config.d/mlops-rehearsal.conf").write_text(
            "HostKey /etc/ssh/ssh_host_ed25519_key\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UseDNS no\n"
        )
        public = self.key_file.with_suffix(".pub").read_text()
        for home, uid in (("root", 0), (f"home/{HOST_ADMIN_USER}", HOST_ADMIN_UID)):
            authorized = upper / home / ".ssh/authorized_keys"
            authorized.write_text(public)
            authorized.chmod(0o600)
            os.chown(authorized, uid, uid)
            os.chown(authorized.parent, uid, uid)
            authorized.parent.chmod(0o700)

    def _mkdirs_like_lower(self, upper: Path, *relatives: str) -> None:
        """Create directories in a host's upper layer with the owner and mode they have in the
        lower layers (an upper directory's attributes win in the merged view)."""
        for relative in relatives:
            parts = Path(relative).parts
            for depth in range(1, len(parts) + 1):
                rel = Path(*parts[:depth])
                target = upper / rel
                if target.exists():
                    continue
                target.mkdir()
                lower = next((layer / rel for layer in self.lowers if (layer / rel).exists()), None)
                if lower is not None:
                    info = lower.stat()
                    os.chown(target, info.st_uid, info.st_gid)
                    target.chmod(info.st_mode & 0o7777)

    def _wait_ready(self, host: Host) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if host.process.poll() is not None:
                raise HostsError(f"host {host.name} stopped during start:\n{self._console(host)}")
            try:
                with socket.create_connection((host.address, 22), timeout=1) as conn:
                    if conn.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise HostsError(f"sshd on {host.name} ({host.address}) did not answer within "
                         f"{self.ready_timeout_s:.0f} s:\n{self._console(host)}")

    def _close_control_masters(self) -> None:
        control_dir = self.workdir / "cp"
        for sock in control_dir.glob("*") if control_dir.is_dir() else []:
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "test-host"],
                           capture_output=True, timeout=10)
        marker = str(control_dir)
        for pid in _pids():  # a master that ignored -O exit: only ours, found by its ControlPath
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("ssh") and marker in cmdline:
                _kill(pid)

    def _make_cgroups(self, host: Host) -> list[Path]:
        made = []
        for mount, options, own in _cgroup_hierarchies():
            parent = mount / own.lstrip("/")
            for path in (parent / f"mlops-hosts-{self.id}", parent / f"mlops-hosts-{self.id}" / host.name):
                path.mkdir(exist_ok=True)
                if "cpuset" in options.split(","):  # v1 cpuset: a new cgroup starts with no CPUs
                    for knob in ("cpuset.cpus", "cpuset.mems"):
                        (path / knob).write_text((path.parent / knob).read_text())
            made.append(parent / f"mlops-hosts-{self.id}" / host.name)
        return made

    def _console(self, host: Host) -> str:
        try:
            return (host.dir / "console.log").read_text(errors="replace")[-3000:]
        except OSError:
            return "(no console log)"


# Runs as PID 1 of the host's new PID namespace, with the machine's /bin/sh, until pivot_root.
_HOST_INIT = r"""
R={root}
mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
{cgroup_mounts}
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for d in null zero full random urandom tty; do
    touch "$R/dev/$d"
    mount --bind "/dev/$d" "$R/dev/$d"
done
mkdir -p "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o nosuid,nodev tmpfs "$R/dev/shm"
mount -t mqueue mqueue "$R/dev/mqueue"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
# Only in this mount namespace: the loop device is released (autoclear) when the host dies.
# Without loop devices the scratch folder itself serves.
mount -o loop {image} {scratch} || echo "no loop device: Docker data on the scratch folder"
mkdir -p {scratch}/docker {scratch}/containerd "$R/var/lib/docker" "$R/var/lib/containerd"
mount --bind {scratch}/docker "$R/var/lib/docker"
mount --bind {scratch}/containerd "$R/var/lib/containerd"
hostname {name}
cd "$R"
pivot_root . mnt
exec /usr/bin/env -i PATH={path} HOME=/root LANG=C.UTF-8 /bin/sh -euc '
umount -l /mnt
mkdir -p /run/sshd /run/lock
exec /usr/bin/tini -s -g -- /usr/sbin/sshd -D -e
'
"""

# dockerd without systemd. Debian's /etc/init.d/docker works too once its `ulimit` lines may
# fail (no CAP_SYS_RESOURCE above the container limits); start-stop-daemon avoids the question.
START_DOCKERD = (
    "start-stop-daemon --start --background --no-close --make-pidfile "
    "--pidfile /run/dockerd.pid --exec /usr/sbin/dockerd -- >>/var/log/dockerd.log 2>&1"
)


_SCRATCH_BYTES = 64 << 30  # sparse: only what Docker writes takes space
_STATE_DIR = Path("/run/mlops-test-hosts")  # one file per live TestHosts: who owns it
_SUBNETS_DIR = Path("/run/mlops-test-subnets")  # free_subnet's picks: which live process owns each


def reap_stale() -> list[str]:
    """Remove what harnesses whose process died (a killed test run) left behind; returns
    their ids. Called by every TestHosts.up(); harnesses of live processes are left alone."""
    reaped = []
    for state_file in _STATE_DIR.glob("*") if _STATE_DIR.is_dir() else []:
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        owner = state.get("owner", 0)
        if _alive(owner) and _start_time(owner) == state.get("owner_start"):
            continue
        detached = state.get("state_file")
        if detached and Path(detached).exists():
            continue  # outlives its creator on purpose, until its state file is gone
        _sweep(state_file.name, Path(state.get("workdir_parent", "/var/tmp")))
        reaped.append(state_file.name)
    return reaped


def _footprint(hid: str, workdir_parent: Path) -> list[str]:
    """What exists on the machine now of the harness `hid`, found by the names it uses."""
    left: list[str] = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith(f"mlh-{hid}-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left += [f"link {name}" for name in _link_names(links) if name.startswith((f"mlh{hid}", f"mlhbr{hid}"))]
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    left += [f"iptables {line}" for line in rules.splitlines() if f"MLOPS-HOSTS-{hid}" in line]
    with open("/proc/self/mountinfo") as handle:
        left += [f"mount {line.split()[4]}" for line in handle if f"mlops-hosts-{hid}-" in line]
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"mlops-hosts-{hid}-" in cmdline or f"mlh-{hid}-" in cmdline:
            left.append(f"process {pid} {cmdline[:80]}")
    for top in _cgroup_tops(hid):
        if top.exists():
            left.append(f"cgroup {top}")
            left += [f"process {pid} (in {top.name})" for pid in _cgroup_pids(top)]
    left += [f"loop {line.split(':')[0]}" for line in _loops(hid)]
    left += [f"folder {p}" for p in workdir_parent.glob(f"mlops-hosts-{hid}-*")]
    if (_STATE_DIR / hid).exists():
        left.append(f"state {_STATE_DIR / hid}")
    return left


def _sweep(hid: str, workdir_parent: Path) -> None:
    """Remove every trace of harness `hid` (idempotent): processes, cgroups, namespaces,
    links, firewall rules, its folder and its state file."""
    # unshare parents (their death kills each host's PID 1), ssh masters
    _kill_matching(lambda cmdline: f"mlops-hosts-{hid}-" in cmdline)
    _empty_and_remove_cgroups(_cgroup_tops(hid))  # whatever still runs there, a host's PID 1 included
    _detach_loops(hid, "")  # once the hosts' mount namespaces are gone
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in netns.splitlines():
        if line.startswith(f"mlh-{hid}-"):
            subprocess.run(["ip", "netns", "delete", line.split()[0]], capture_output=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for name in _link_names(links):
        if name.startswith((f"mlh{hid}", f"mlhbr{hid}")):
            subprocess.run(["ip", "link", "delete", name], capture_output=True)
    chain = f"MLOPS-HOSTS-{hid}"
    while subprocess.run(["iptables", "-w", "-D", "FORWARD", "-j", chain], capture_output=True).returncode == 0:
        pass
    _remove_security_group_chain(hid)
    subprocess.run(["iptables", "-w", "-F", chain], capture_output=True)
    subprocess.run(["iptables", "-w", "-X", chain], capture_output=True)
    for folder in workdir_parent.glob(f"mlops-hosts-{hid}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    (_STATE_DIR / hid).unlink(missing_ok=True)


def _security_group_chain(hid: str) -> str:
    """The sim target's security-group chain of harness `hid` (named like the harness's own, so
    that footprint() finds it)."""
    return f"MLOPS-HOSTS-{hid}-SG"


def _security_group_jumps(hid: str) -> list[list[str]]:
    """Into the security-group chain of harness `hid`: host to host (bridged frames, through
    FORWARD and the harness's chain, ahead of its ACCEPT) and this machine to a host (OUTPUT)."""
    bridge, chain = f"mlhbr{hid}", _security_group_chain(hid)
    return [[f"MLOPS-HOSTS-{hid}", "-i", bridge, "-o", bridge, "-j", chain], ["OUTPUT", "-o", bridge, "-j", chain]]


def _remove_security_group_chain(hid: str) -> None:
    """The sim target's security-group chain of harness `hid` and its two jumps, gone."""
    for jump in _security_group_jumps(hid):
        while subprocess.run(["iptables", "-w", "-D", *jump], capture_output=True).returncode == 0:
            pass
    for action in ("-F", "-X"):
        subprocess.run(["iptables", "-w", action, _security_group_chain(hid)], capture_output=True)


def _sweep_host(hid: str, host: Host) -> None:
    """Remove one host of harness `hid` (the others go on): its processes, cgroups, loop
    device, namespace, link and folder."""
    marker = f"{host.dir}/"
    # its unshare parent: its death kills the host's PID 1
    _kill_matching(lambda cmdline: marker in cmdline and "unshare" in cmdline)
    _empty_and_remove_cgroups([top / host.name for top in _cgroup_tops(hid)])
    _detach_loops(hid, marker)  # once its mount namespace is gone
    subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True)
    subprocess.run(["ip", "link", "delete", host.veth], capture_output=True)
    shutil.rmtree(host.dir, ignore_errors=True)


def _kill_matching(matches) -> None:
    """SIGKILL every process (but this one) whose command line `matches`."""
    for pid in _pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if matches(cmdline) and pid != os.getpid():
            _kill(pid)


def _empty_and_remove_cgroups(tops: list[Path]) -> None:
    for _ in range(100):
        pids = [pid for top in tops for pid in _cgroup_pids(top)]
        if not pids:
            break
        for pid in pids:
            _kill(pid)
        time.sleep(0.05)
    _remove_cgroups(tops)


def _detach_loops(hid: str, marker: str) -> None:
    """The loop devices of harness `hid` whose backing file path holds `marker`, detached:
    waited for first (they detach by themselves once their mount namespace is gone)."""
    for _ in range(100):
        if not [line for line in _loops(hid) if marker in line]:
            break
        time.sleep(0.05)
    for line in [line for line in _loops(hid) if marker in line]:
        subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True)


def _loops(hid: str) -> list[str]:
    listing = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if f"mlops-hosts-{hid}-" in line]


def _link_names(ip_o_link: str) -> list[str]:
    return [line.split(":")[1].strip().split("@")[0] for line in ip_o_link.splitlines() if ":" in line]


def _cgroup_tops(hid: str) -> list[Path]:
    return [mount / own.lstrip("/") / f"mlops-hosts-{hid}" for mount, _, own in _cgroup_hierarchies()]


def _cgroup_pids(top: Path) -> list[int]:
    pids = []
    for directory, _, _ in os.walk(top):
        try:
            pids += [int(p) for p in Path(directory, "cgroup.procs").read_text().split()]
        except OSError:
            continue
    return pids


def _is_unshare(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "unshare"
    except OSError:
        return False


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _covering_network(addresses: list) -> ipaddress.IPv4Network:
    """The /24 of the addresses, or the smallest network holding them all (for example two
    emulated instances in different subnets of one VPC)."""
    network = ipaddress.ip_network(f"{addresses[0]}/24", strict=False)
    while not all(address in network for address in addresses) and network.prefixlen > 8:
        network = network.supernet()
    return network


def _cgroup_hierarchies() -> list[tuple[Path, str, str]]:
    """(mount point, mount options, this process's cgroup path) per cgroup hierarchy mounted
    under /sys/fs/cgroup: v1 controllers, name=systemd, and the unified (v2) one."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point = fields[4]
        fstype, superopts = fields[fields.index("-") + 1], fields[fields.index("-") + 3]
        if not mount_point.startswith("/sys/fs/cgroup") or fstype not in ("cgroup", "cgroup2"):
            continue
        options = ",".join(o for o in superopts.split(",") if o not in ("rw", "ro"))
        if fstype == "cgroup2":
            path = own.get("", "/")
        else:
            opts = set(options.split(","))
            path = next((p for c, p in own.items() if c and set(c.split(",")) <= opts), "/")
        found.append((Path(mount_point), options if fstype == "cgroup" else "", path))
    return found


def _cgroup_mount_script() -> str:
    """Shell lines that mount, inside a host, the same hierarchies as the machine has; seen
    through the host's cgroup namespace each shows the host's own cgroup as its root."""
    lines = []
    hierarchies = _cgroup_hierarchies()
    if not any(mount == Path("/sys/fs/cgroup") for mount, _, _ in hierarchies):
        lines.append('mount -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup"')
    for mount, options, _ in hierarchies:
        target = '"$R' + str(mount) + '"'
        lines.append(f"mkdir -p {target}")
        if options:
            lines.append(f"mount -t cgroup -o {options} cgroup {target}")
        else:
            lines.append(f"mount -t cgroup2 cgroup2 {target}")
    for link in Path("/sys/fs/cgroup").iterdir():  # e.g. cpu -> cpu,cpuacct
        if link.is_symlink():
            lines.append(f'ln -s {os.readlink(link)} "$R{link}"')
    return "\n".join(lines)


def _remove_cgroups(cgroups: list[Path]) -> None:
    """rmdir each cgroup tree bottom-up; the kernel refuses while a process is still in one."""
    for top in cgroups:
        if not top.is_dir():
            continue
        for _ in range(50):
            for directory, _, _ in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass
            if not top.exists():
                break
            time.sleep(0.1)


def _routed_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine routes or has an address in, except the default route."""
    nets: list[ipaddress.IPv4Network] = []
    routes = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"],
                            capture_output=True, text=True).stdout
    for route in json.loads(routes or "[]"):
        dst = route.get("dst", "")
        if dst in ("default", ""):
            continue
        try:
            nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
        except ValueError:
            continue
    return nets


def _owner_hint(net: ipaddress.IPv4Network) -> str:
    """When `net` is another harness's bridge: whose it is and how to remove it."""
    routes = subprocess.run(["ip", "-4", "-j", "route", "show", str(net)], capture_output=True, text=True).stdout
    devices = [route.get("dev", "") for route in json.loads(routes or "[]")]
    hid = next((d.removeprefix("mlhbr") for d in devices if d.startswith("mlhbr")), None)
    if hid is None:
        return ""
    try:
        state = json.loads((_STATE_DIR / hid).read_text())
    except (OSError, ValueError):
        state = {}
    owner = state.get("state_file")
    if owner:
        home = Path(owner).parent.parent
        return (f" It is the bridge of the test hosts recorded in {owner}: remove them with "
                f"`MLOPS_HOME={home} MLOPS_TARGET=sim make down` (or delete that file: the next run reaps them).")
    return f" It is the bridge of test hosts {hid} whose owner still runs; stop that run first."


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise HostsError(f"`{' '.join(cmd)}` exited {result.returncode}: {result.stderr.strip()}")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
