"""Ansible, wrapped once: run a playbook of ansible_roles/ against the hosts of an inventory
through ansible-runner, stream its progress to a log function, and count per host.

    ansible = Ansible(playbook_dir="ansible_roles", work_dir=".mlops/ansible/aws",
                      private_key_file="~/.ssh/mlops", known_hosts_file=".mlops/known_hosts")
    result = ansible.run_playbook(tofu_outputs["ansible_inventory"], tags=["hosts"], log=print)
    result.per_host   # {"mlops-api": {"ok": 12, "changed": 0, "failed": 0, ...}, ...}

SSH is made safe here, not left to the user's ~/.ssh/config (the ControlPersist
danger): no user config file; the given private key only; host keys checked against the
project's known_hosts (strict, or `accept-new` to record keys on first contact), where the
targets pin each new instance's keys read from its EC2 console output before the first
connection (`host_keys_from_console`, `pin_console_host_keys`); connection sharing in a private ControlPath of this run, whose
masters are closed when the run ends. Only the inventory's own hosts are contacted, an SSH
host on a loopback address is refused (it would be this machine), and `limit` can narrow
the run further.

The `local` target has no hosts to configure and no Ansible resource (resources/hosts.py).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Callable, Literal

import dagster as dg
from pydantic import Field

Log = Callable[[str], None]
COUNTS = ("ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored")
# Secrets that only machines use, generated once for every target when their variable is
# unset (name: random bytes): the Ray cluster's token, which the api role needs with more
# than one API host, and the password of the Redis that keeps that cluster's state.
MACHINE_SECRETS = {"api_ray_token": 32, "ray_gcs_store_password": 24}
# cloud-init prints the host's public keys on the instance console between these lines.
HOST_KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
HOST_KEYS_END = "-----END SSH HOST KEY KEYS-----"
_HOST_KEY = re.compile(r"(?:^|\s)((?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) [A-Za-z0-9+/]+={0,3})(?:\s|$)")


def console_host_keys(console: str) -> list[str]:
    """The SSH host keys ("TYPE BASE64") cloud-init printed on an instance's console, from the
    last complete block; [] while there is none (the instance is still booting)."""
    if HOST_KEYS_BEGIN not in console:
        return []
    block = console.rsplit(HOST_KEYS_BEGIN, 1)[1]
    if HOST_KEYS_END not in block:
        return []
    lines = block.split(HOST_KEYS_END, 1)[0].splitlines()
    return [match.group(1) for line in lines if (match := _HOST_KEY.search(line))]


class AnsibleError(RuntimeError):
    """A playbook failed; the message names each failed host, its task and Ansible's message."""

    def __init__(self, message: str, result: "PlaybookResult | None" = None):
        super().__init__(message)
        self.result = result


@dataclass
class TaskFailure:
    host: str
    task: str
    message: str
    unreachable: bool = False

    def __str__(self) -> str:
        kind = "unreachable" if self.unreachable else "failed"
        return f"{self.host} {kind} at task '{self.task}': {self.message}"


@dataclass
class PlaybookResult:
    playbook: str
    status: str
    rc: int
    per_host: dict[str, dict[str, int]]
    failures: list[TaskFailure] = field(default_factory=list)
    seconds: float = 0.0
    # What the playbook published with `set_stats` (e.g. tracking_backup.yml's backup key).
    stats_data: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return sum(counts.get("changed", 0) for counts in self.per_host.values())

    @property
    def ok(self) -> bool:
        return self.status == "successful" and not self.failures


class Ansible(dg.ConfigurableResource):
    """Runs ansible_roles/ playbooks over SSH with safe settings (see the module docstring)."""

    target: str = Field(default="aws", description="The target these hosts belong to (for messages and metadata).")
    playbook_dir: str = Field(default="", description="The folder with site.yml and the roles (ansible_roles/).")
    work_dir: str = Field(default="", description="ansible-runner's private data folders and the written inventories.")
    private_key_file: str | None = Field(default=None, description="SSH private key for the hosts (else the ssh-agent's keys).")
    ssh_user: str | None = Field(default=None, description="Overrides the inventory's ansible_user.")
    known_hosts_file: str = Field(default="", description="The project's known_hosts (default: work_dir/known_hosts).")
    host_key_checking: Literal["strict", "accept-new"] = Field(
        default="accept-new",
        description="strict: only keys already in known_hosts; accept-new: record a new host's key, refuse a changed one.",
    )
    extra_vars: dict[str, Any] = Field(default_factory=dict, description="Extra vars for every run (e.g. image sources).")
    secret_extra_vars_env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra vars read from environment variables at run time, e.g. "
        "{'grafana_admin_password': 'MLOPS_GRAFANA_ADMIN_PASSWORD'}; never written to run config.",
    )
    generated_secrets_dir: str = Field(
        default="",
        description="When set, a secret of secret_extra_vars_env whose variable is unset is generated once "
        "and kept here (mode 0600): for the offline rehearsal only.",
    )
    machine_secrets_dir: str = Field(
        default="",
        description="Where the secrets no person needs (MACHINE_SECRETS: the Ray cluster's token) are generated "
        "once (mode 0600) when their variable is unset, for every target.",
    )
    host_keys_from_console: bool = Field(
        default=False,
        description="Before each run, pin in known_hosts the SSH host keys each inventory host with an instance_id "
        "printed on its EC2 console (cloud-init); with host_key_checking strict, SSH trusts only those.",
    )
    console_keys_timeout_s: float = Field(default=600, description="How long to wait for a new instance's console to show its keys.")
    console_poll_s: float = Field(default=10, description="Seconds between two reads of a console.")
    forks: int = Field(default=5, description="Hosts configured in parallel.")
    timeout_s: int = Field(default=1800, description="Whole-run timeout in seconds.")

    # --- the inventory ---------------------------------------------------------------------------

    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts_file or Path(self.work_dir) / "known_hosts")

    # A real instance's console keeps its boot output only for a while: keys pinned for an
    # instance are kept. The rehearsal's consoles always show the hosts' current keys.
    _console_always_current = False

    def ec2_client(self, inventory: dict):
        """EC2 with the usual AWS credentials, in the inventory's region (`aws_region`)."""
        import boto3

        region = ((inventory.get("all") or {}).get("vars") or {}).get("aws_region")
        return boto3.client("ec2", region_name=region) if region else boto3.client("ec2")

    def pin_console_host_keys(self, inventory: dict, log: Log) -> dict[str, list[str]]:
        """Record in known_hosts the host keys of every inventory host with an instance_id, read
        from its console output (cloud-init's SSH HOST KEY KEYS block), so that the first SSH
        connection already checks them (StrictHostKeyChecking=yes): nothing is trusted on first
        use. Keys pinned for the same instance are kept (a long-running instance's console no
        longer shows its boot); a new instance at an address replaces that address's keys.
        Returns address -> the keys pinned in this call."""
        known_hosts = self.known_hosts_path()
        lines = known_hosts.read_text().splitlines() if known_hosts.exists() else []
        todo: dict[str, tuple[str, str]] = {}  # host name -> (address, instance id)
        for name, host_vars in inventory_hosts(inventory).items():
            address, instance = host_vars.get("ansible_host"), host_vars.get("instance_id")
            if not address or not instance:
                continue
            pinned = any(line.split()[:1] == [str(address)] and line.endswith(f" instance={instance}") for line in lines)
            if not pinned or self._console_always_current:
                todo[name] = (str(address), str(instance))
        if not todo:
            return {}
        client = self.ec2_client(inventory)
        deadline = time.monotonic() + self.console_keys_timeout_s
        found: dict[str, list[str]] = {}
        while True:
            for name, (address, instance) in todo.items():
                if name not in found:
                    output = client.get_console_output(InstanceId=instance).get("Output") or ""
                    keys = console_host_keys(output)
                    if keys:
                        found[name] = keys
            missing = sorted(set(todo) - set(found))
            if not missing:
                break
            if time.monotonic() > deadline:
                raise AnsibleError(
                    f"{self.target}: no SSH host keys on the console of "
                    + ", ".join(f"{name} ({todo[name][1]})" for name in missing)
                    + f" after {self.console_keys_timeout_s:.0f}s: cloud-init prints them between "
                    f"'{HOST_KEYS_BEGIN}' lines when the instance boots. Check the instance's console "
                    "(aws ec2 get-console-output), then run again; SSH to hosts whose keys are not "
                    "pinned is refused."
                )
            time.sleep(self.console_poll_s)
        addresses = {address for address, _ in todo.values()}
        kept = [line for line in lines if line.strip() and line.split()[0] not in addresses]
        pinned = [f"{todo[name][0]} {key} instance={todo[name][1]}" for name in sorted(found) for key in found[name]]
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        known_hosts.write_text("\n".join(kept + pinned) + "\n")
        for name in sorted(found):
            log(f"{self.target}: pinned {len(found[name])} host keys of {name} ({todo[name][1]}) from its console")
        return {todo[name][0]: found[name] for name in found}

    def ssh_common_args(self, control_dir: Path) -> str:
        known_hosts = self.known_hosts_path()
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        known_hosts.touch(exist_ok=True)
        options = [
            "-F", "/dev/null",  # never the user's ssh config (ProxyJump, ControlPersist, ...)
            "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=" + ("yes" if self.host_key_checking == "strict" else "accept-new"),
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=15",
        ]
        if self.private_key_file:
            options += ["-o", f"IdentityFile={Path(self.private_key_file).expanduser()}", "-o", "IdentitiesOnly=yes"]
        return " ".join(shlex.quote(o) for o in options)

    def build_inventory(self, inventory: dict, control_dir: Path) -> dict:
        """The inventory to run with: `inventory` (e.g. tofu_state's `ansible_inventory`) plus
        the connection settings of this resource in all.vars. Raises when a host would be
        reached by SSH on a loopback address."""
        if not isinstance(inventory, dict) or "all" not in inventory:
            raise AnsibleError("the inventory must be a YAML-style structure with an `all` group (tofu_state's ansible_inventory)")
        merged = json.loads(json.dumps(inventory))
        hosts = inventory_hosts(merged)
        if not hosts:
            raise AnsibleError("the inventory names no hosts")
        for name, host_vars in hosts.items():
            address = str(host_vars.get("ansible_host") or name)
            if host_vars.get("ansible_connection") == "local":
                continue
            try:
                loopback = ip_address(address).is_loopback
            except ValueError:
                loopback = address == "localhost"
            if loopback:
                raise AnsibleError(
                    f"host {name} would be reached by SSH at {address}, which is this machine; refusing "
                    "(an SSH control master to it could outlive the run). Use the host's own address."
                )
            if not host_vars.get("ansible_host"):
                raise AnsibleError(f"host {name} has no ansible_host address in the inventory")
        connection = {
            "ansible_ssh_common_args": self.ssh_common_args(control_dir),
            # Connection sharing only in this run's private folder, closed when the run ends.
            "ansible_ssh_args": "-o ControlMaster=auto -o ControlPersist=60s",
            "ansible_control_path_dir": str(control_dir),
            "ansible_control_path": "%(directory)s/%%C",
            "ansible_pipelining": True,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        if self.private_key_file:
            connection["ansible_ssh_private_key_file"] = str(Path(self.private_key_file).expanduser())
        if self.ssh_user:
            connection["ansible_user"] = self.ssh_user
        all_group = merged["all"]
        all_group["vars"] = {**(all_group.get("vars") or {}), **connection}
        return merged

    # --- running ---------------------------------------------------------------------------------

    def run_playbook(
        self,
        inventory: dict,
        playbook: str = "site.yml",
        *,
        tags: list[str] | None = None,
        extra_vars: dict[str, Any] | None = None,
        limit: str | None = None,
        log: Log | None = None,
        raise_on_failure: bool = True,
    ) -> PlaybookResult:
        """Run `playbook` of playbook_dir on the inventory's hosts; per-host counts in the result.
        A failed run raises AnsibleError naming each failed host, its task and Ansible's message."""
        import ansible_runner

        log = log or (lambda message: None)
        playbook_dir = Path(self.playbook_dir).resolve()
        if not (playbook_dir / playbook).is_file():
            raise AnsibleError(f"no playbook {playbook} in {playbook_dir}")
        if self.host_keys_from_console:
            self.pin_console_host_keys(inventory, log)
        Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        private_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.work_dir))
        control_dir = Path(tempfile.mkdtemp(prefix="mlops-ansible-cp-"))  # short: unix socket paths
        os.chmod(control_dir, 0o700)
        variables = {**self.prepare(log), **self.extra_vars, **(extra_vars or {})}
        secret_names = set()
        for name in self.secret_extra_vars_env:
            value = self.secret(name)
            if value:
                variables[name] = value
                secret_names.add(name)
        failures: list[TaskFailure] = []
        published: dict[str, Any] = {}
        started = time.monotonic()

        def on_event(event: dict) -> bool:
            data = event.get("event_data", {})
            kind = event.get("event", "")
            host = data.get("host", "")
            task = data.get("task", "")
            if kind == "playbook_on_play_start":
                log(f"ansible: play '{data.get('play', '')}'")
            elif kind == "runner_on_ok":
                changed = data.get("res", {}).get("changed", False)
                if changed:
                    log(f"ansible: {host} changed: {task}")
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                message = _failure_message(data.get("res", {}))
                failures.append(TaskFailure(host, task, message))
                log(f"ansible: {host} FAILED at '{task}': {message}")
            elif kind == "runner_on_unreachable":
                message = _failure_message(data.get("res", {}))
                failures.append(TaskFailure(host, task, message, unreachable=True))
                log(f"ansible: {host} UNREACHABLE at '{task}': {message}")
            elif kind == "playbook_on_stats":
                log("ansible: play recap " + json.dumps(_per_host(data)))
                published.update((data.get("artifact_data") or {}))
            return True

        try:
            runner = ansible_runner.run(
                private_data_dir=str(private_dir),
                project_dir=str(playbook_dir),
                playbook=playbook,
                inventory=self.build_inventory(inventory, control_dir),
                extravars=variables,
                tags=",".join(tags) if tags else None,
                limit=limit,
                forks=self.forks,
                timeout=self.timeout_s,
                quiet=True,
                event_handler=on_event,
                envvars=self._envvars(private_dir, playbook_dir),
            )
        finally:
            close_control_masters(control_dir)
            shutil.rmtree(control_dir, ignore_errors=True)
            # The private data folder holds the extra vars (secrets included): keep only the
            # output and the events for debugging.
            for sensitive in ("env/extravars", "inventory/hosts", "inventory/hosts.json"):
                (private_dir / sensitive).unlink(missing_ok=True)
        stats = runner.stats or {}
        result = PlaybookResult(
            playbook=playbook,
            status=runner.status,
            rc=runner.rc,
            per_host=_per_host(stats),
            failures=failures,
            seconds=round(time.monotonic() - started, 2),
            stats_data=published,
        )
        if raise_on_failure and not result.ok:
            raise AnsibleError(describe_failure(result, private_dir, secret_names), result)
        return result

    def prepare(self, log: Log) -> dict[str, Any]:
        """Extra vars that need work before a run (subclasses: the rehearsal's local images)."""
        return {}

    def secret(self, name: str) -> str | None:
        """The value of secret extra var `name`: its environment variable, else (rehearsal)
        the generated one; None when neither exists."""
        env_name = self.secret_extra_vars_env.get(name)
        return (os.environ.get(env_name) if env_name else None) or self._generated_secret(name)

    def _generated_secret(self, name: str) -> str | None:
        from mlops_assets.state import generated_secret

        if name in MACHINE_SECRETS and self.machine_secrets_dir:
            return generated_secret(Path(self.machine_secrets_dir), name, nbytes=MACHINE_SECRETS[name])
        if not self.generated_secrets_dir:
            return None
        return generated_secret(Path(self.generated_secrets_dir), name)

    def _envvars(self, private_dir: Path, playbook_dir: Path) -> dict[str, str]:
        return {
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            "ANSIBLE_HOME": str(private_dir / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(private_dir / "ansible-tmp"),
            "ANSIBLE_ROLES_PATH": str(playbook_dir),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_GALAXY_SERVER_LIST": "",
            "ANSIBLE_TIMEOUT": "30",
        }


def inventory_hosts(inventory: dict) -> dict[str, dict]:
    """host name -> its variables (own ones merged over groups' hosts entries), every group."""
    found: dict[str, dict] = {}

    def walk(group: dict) -> None:
        for name, host_vars in (group.get("hosts") or {}).items():
            found.setdefault(name, {}).update(host_vars or {})
        for child in (group.get("children") or {}).values():
            walk(child or {})

    for group in inventory.values():
        walk(group or {})
    return found


def close_control_masters(control_dir: Path) -> None:
    """Close every SSH control master whose socket is in control_dir (and only those)."""
    for socket_path in control_dir.glob("*") if control_dir.is_dir() else []:
        subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "mlops-host"],
                       capture_output=True, timeout=10)


def describe_failure(result: PlaybookResult, private_dir: Path | None = None, secret_names: set[str] = frozenset()) -> str:
    lines = [f"Ansible playbook {result.playbook} failed ({result.status}, rc={result.rc}):"]
    lines += [f"- {failure}" for failure in result.failures]
    if not result.failures:
        tail = ""
        stdout = private_dir / "artifacts" if private_dir else None
        if stdout and stdout.is_dir():
            outputs = sorted(stdout.glob("*/stdout"))
            if outputs:
                tail = outputs[-1].read_text(errors="replace")[-2000:]
        lines.append(tail.strip() or "no task failed: see ansible-runner's output in the run folder")
    if secret_names:
        lines.append(f"(secret variables given: {', '.join(sorted(secret_names))})")
    return "\n".join(lines)


def _failure_message(res: dict) -> str:
    message = str(res.get("msg") or "").strip()
    for key in ("stderr", "module_stderr", "stdout"):
        extra = str(res.get(key) or "").strip()
        if extra and extra not in message:
            message = f"{message} | {key}: {extra[-600:]}" if message else extra[-600:]
    return message or json.dumps(res)[:600]


def _per_host(stats: dict) -> dict[str, dict[str, int]]:
    per_host: dict[str, dict[str, int]] = {}
    for name in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed"):
        for host, count in (stats.get(name) or {}).items():
            key = {"failures": "failed", "dark": "unreachable"}.get(name, name)
            if key == "processed":
                per_host.setdefault(host, {})
                continue
            per_host.setdefault(host, {})[key] = int(count)
    for counts in per_host.values():
        for key in COUNTS:
            counts.setdefault(key, 0)
    return per_host


class RehearsalAnsible(Ansible):
    """`sim`: the same playbooks, with the images a registry would serve (Prometheus, Alertmanager,
    node_exporter, the Pushgateway) built locally from the offline Debian base
    (rehearsal/images.py) and loaded from archives through the roles' own variables; Grafana is
    rendered only (no Grafana image offline). Before each run, the hosts themselves: a rehearsal
    host (network namespace, own Debian root, sshd) at each address of the inventory, accepting
    tofu_state's generated key (rehearsal/sim_hosts.py)."""

    target: str = "sim"
    images_dir: str = Field(default="", description="Where the rehearsal's image archives are saved.")
    hosts_state_file: str = Field(
        default="",
        description="When set, every run first brings up (or reuses) a rehearsal host at each address of the "
        "inventory (rehearsal/sim_hosts.py), recorded in this file; `make down` removes them.",
    )
    emulator_dir: str = Field(
        default="",
        description="The EC2 emulator's folder (rehearsal/emulator.py): its record (address) and the instances' "
        "consoles, where the rehearsal hosts print their host keys.",
    )

    # A rehearsal host brought up again at the same instance has a new host key: read it again.
    _console_always_current = True

    def ec2_client(self, inventory: dict):
        """The EC2 emulator recorded in emulator_dir."""
        from mlops_assets.rehearsal.emulator import Ec2Emulator
        from mlops_assets.state import RECORDS

        known = RECORDS["emulator"].in_folder(Path(self.emulator_dir)).read() if self.emulator_dir else None
        if not known:
            raise AnsibleError(f"sim: no EC2 emulator recorded in {self.emulator_dir or '(emulator_dir unset)'}: "
                               "materialize tofu_state first")
        return Ec2Emulator(**known).client()

    def run_playbook(self, inventory: dict, playbook: str = "site.yml", **kwargs) -> PlaybookResult:
        # What the cloud does in `aws` (instances boot with sshd and the key pair): the hosts
        # at the emulator's instances' private addresses, accepting tofu_state's SSH key.
        if self.hosts_state_file:
            self.ensure_hosts(inventory, kwargs.get("log"))
        return super().run_playbook(inventory, playbook, **kwargs)

    def ensure_hosts(self, inventory: dict, log: Log | None = None):
        """The rehearsal hosts for `inventory`, each printing its host keys on its instance's
        console in the emulator (as cloud-init does), from where `pin_console_host_keys` reads them;
        and the emulator's security groups enforced on them (rehearsal/security_groups.py), as
        they stand after the latest tofu_state apply."""
        from mlops_assets.rehearsal.emulator import Ec2Emulator
        from mlops_assets.rehearsal.security_groups import enforce
        from mlops_assets.rehearsal.sim_hosts import ensure_sim_hosts

        if not self.private_key_file:
            raise AnsibleError("sim: no private_key_file (tofu_state's generated rehearsal key)")
        try:
            hosts = ensure_sim_hosts(
                inventory, Path(self.hosts_state_file),
                public_key_file=Path(self.private_key_file).with_suffix(".pub"),
                console_dir=Ec2Emulator.console_dir(Path(self.emulator_dir)) if self.emulator_dir else None,
                log=log,
            )
        except Exception as exc:
            raise AnsibleError(f"sim: could not bring up the rehearsal hosts of the inventory: {exc}") from None
        if self.emulator_dir:
            ec2 = self.ec2_client(inventory)  # an AnsibleError of its own when no emulator is recorded
            try:
                enforce(hosts, ec2, log=log)
            except Exception as exc:  # the emulator not answering, iptables refusing
                raise AnsibleError(f"sim: could not enforce the security groups on the rehearsal hosts: {exc}") from None
        return hosts

    def prepare(self, log: Log) -> dict[str, Any]:
        from mlops_assets.rehearsal import images as rehearsal_images
        from mlops_assets.rehearsal.engine import docker_client

        # role -> the local image from Debian's package, and the registry image it replaces offline.
        builders = {
            "prometheus": (rehearsal_images.build_prometheus_image, "prom/prometheus"),
            "alertmanager": (rehearsal_images.build_alertmanager_image, "prom/alertmanager"),
            "node_exporter": (rehearsal_images.build_node_exporter_image, "prom/node-exporter"),
            "pushgateway": (rehearsal_images.build_pushgateway_image, "prom/pushgateway"),
            # Redis, the state store of the API hosts' Ray cluster.
            "ray_gcs_store": (rehearsal_images.build_redis_image, "redis"),
        }
        variables: dict[str, Any] = {"grafana_render_only": True}
        role = "prometheus"
        try:
            engine = docker_client()
            for role, (build, _) in builders.items():
                image = build(engine)
                archive = rehearsal_images.save_archive(engine, image, Path(self.images_dir) if self.images_dir else None)
                log(f"sim: {role} image {image} from Debian's package, archive {archive}")
                repository, _, tag = image.rpartition(":")
                variables.update({f"{role}_image_source": "archive", f"{role}_image_repository": repository,
                                  f"{role}_image_tag": tag, f"{role}_image_archive": str(archive)})
        except Exception as exc:  # no engine, no Debian mirror for the build: say what failed
            raise AnsibleError(
                f"sim: could not build the local {role} image that replaces {builders[role][1]} offline "
                f"(needs a Docker-compatible engine, see scripts/setup_podman.sh): {exc}"
            ) from None
        return variables
