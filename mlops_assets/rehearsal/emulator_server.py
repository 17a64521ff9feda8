"""moto's EC2 server for the rehearsal, with one addition: `GetConsoleOutput` answers what the
rehearsal host of that instance printed on its console, as a cloud instance's console shows
cloud-init's output (its SSH host keys between `-----BEGIN SSH HOST KEY KEYS-----` markers).

The console of instance ID is the file `$MLOPS_EMULATOR_CONSOLE_DIR/ID` (written by
rehearsal/sim_hosts.py when the host is up); without it, moto's sample output (no keys), like
an instance still booting.

    python -m mlops_assets.rehearsal.emulator_server -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

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


def main() -> None:
    from moto.server import main as moto_main

    install_console(Path(os.environ[CONSOLE_DIR_ENV]))
    moto_main()


if __name__ == "__main__":
    main()
