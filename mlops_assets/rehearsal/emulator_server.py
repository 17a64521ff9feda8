"""moto's server for the rehearsal (EC2, S3, IAM), with two additions:

- `GetConsoleOutput` answers what the rehearsal host of that instance printed on its console,
  as a cloud instance's console shows cloud-init's output (its SSH host keys between
  `-----BEGIN SSH HOST KEY KEYS-----` markers);
- bucket policies evaluate `Bool` conditions on `aws:SecureTransport` as AWS does for HTTPS,
  which is what the emulator stands for (boto3 and the AWS provider speak only HTTPS to AWS).
  moto 5.2 ignores the `Bool` operator and so applied infra_tf's TLS-only Deny to every request:
  the tracking server could not write a single artifact. Other conditions stay moto's.

The console of instance ID is the file `$MLOPS_EMULATOR_CONSOLE_DIR/ID` (written by
rehearsal/sim_hosts.py when the host is up); without it, moto's sample output (no keys), like
an instance still booting.

    python -m mlops_assets.rehearsal.emulator_server -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

CONSOLE_DIR_ENV = "MLOPS_EMULATOR_CONSOLE_DIR"
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")


def console_file(console_dir: Path, instance_id: str) -> Path:
    if not _INSTANCE_ID.match(instance_id):
        raise ValueError(f"not an instance id: {instance_id!r}")
    return Path(console_dir) / instance_id


def install_console(console_dir: Path) -> None:
    """Make moto's GetConsoleOutput read the instances' console files."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.ec2.responses import general
    from moto.ec2.utils import Base64EncodedString

    sample = general.General.get_console_output

    def get_console_output(self):
        instance_id = self._get_param("InstanceId")
        try:
            path = console_file(console_dir, instance_id)
        except ValueError:
            return sample(self)
        if not path.is_file():
            return sample(self)
        instance = self.ec2_backend.get_instance(instance_id)  # unknown ids: moto's own error
        text = general.SAMPLE_CONSOLE_OUTPUT + path.read_text()
        return ActionResult({"InstanceId": instance.id, "Timestamp": utcnow(),
                             "Output": Base64EncodedString.from_raw_string(text)})

    general.General.get_console_output = get_console_output


# The request context the emulator stands for: S3 reached over HTTPS.
SECURE_CONTEXT = {"aws:securetransport": "true"}


def _bool_condition_holds(statement: dict, context: dict[str, str]) -> bool:
    """False when a `Bool` condition of `statement` on a key of `context` does not match it."""
    for key, expected in ((statement.get("Condition") or {}).get("Bool") or {}).items():
        if key.lower() in context:
            values = expected if isinstance(expected, list) else [expected]
            if context[key.lower()] not in [str(value).lower() for value in values]:
                return False
    return True


def evaluate_bucket_policy(policy: str, action: str, resource: str, context: dict[str, str] = SECURE_CONTEXT):
    """moto's evaluation of `policy`, after dropping the statements whose `Bool` condition on a
    key of `context` does not hold, and that condition from the others."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    document = json.loads(policy)
    statements = document["Statement"] if isinstance(document["Statement"], list) else [document["Statement"]]
    kept = []
    for statement in statements:
        if not _bool_condition_holds(statement, context):
            continue
        conditions = {operator: pairs for operator, pairs in (statement.get("Condition") or {}).items()
                      if operator != "Bool"}
        bool_rest = {key: value for key, value in ((statement.get("Condition") or {}).get("Bool") or {}).items()
                     if key.lower() not in context}
        if bool_rest:
            conditions["Bool"] = bool_rest
        statement = {key: value for key, value in statement.items() if key != "Condition"}
        kept.append({**statement, **({"Condition": conditions} if conditions else {})})
    if not kept:
        return PermissionResult.NEUTRAL
    return IAMPolicy(json.dumps({**document, "Statement": kept})).is_action_permitted(action, resource)


def install_secure_transport() -> None:
    from moto.iam.access_control import PermissionResult
    from moto.s3.models import FakeBucket

    def get_permission(self, action: str, resource: str):
        if self.policy is None:
            return PermissionResult.NEUTRAL
        return evaluate_bucket_policy(self.policy.decode(), action, resource)

    FakeBucket.get_permission = get_permission


def main() -> None:
    from moto.server import main as moto_main

    install_console(Path(os.environ[CONSOLE_DIR_ENV]))
    install_secure_transport()
    moto_main()


if __name__ == "__main__":
    main()
