"""Serve the AWS provider test double to OpenTofu/Terraform from a filesystem mirror.

`write_cli_config(dir)` lays out an unpacked mirror
(`HOST/hashicorp/aws/VERSION/linux_amd64/terraform-provider-aws_vVERSION` for Terraform's and
OpenTofu's registry hosts: a small script that starts this package with the current Python)
and a CLI configuration that installs `hashicorp/aws` from it and never from the network. Point OpenTofu at it with
`TF_CLI_CONFIG_FILE` (the OpenTofu resource's `cli_config_file`).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

# A 5.x version so that infra_tf's `~> 5.0` constraint selects it.
PROVIDER_VERSION = "5.99.0"
PROVIDER_SOURCE = "registry.terraform.io/hashicorp/aws"
# `hashicorp/aws` means registry.terraform.io/... to Terraform, registry.opentofu.org/... to
# OpenTofu: the mirror answers for both.
PROVIDER_SOURCES = (PROVIDER_SOURCE, "registry.opentofu.org/hashicorp/aws")


def _target() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{sys.platform if sys.platform != 'linux' else 'linux'}_{arch}"


def write_cli_config(directory: Path, python: str | None = None) -> Path:
    """Write the mirror and a CLI config under `directory`; return the CLI config's path.

    The content depends only on the interpreter, so rewriting it
    leaves the provider's hash (recorded in .terraform.lock.hcl) unchanged."""
    directory = Path(directory).resolve()
    mirror = directory / "mirror"
    script = (
        "#!/bin/sh\n"
        "# TEST DOUBLE of hashicorp/aws (mlops_assets/rehearsal/aws_provider), backed by moto.\n"
        f"exec {shlex.quote(python or sys.executable)} -m mlops_assets.rehearsal.aws_provider \"$@\"\n"
    )
    for source in PROVIDER_SOURCES:
        package = mirror / source / PROVIDER_VERSION / _target()
        package.mkdir(parents=True, exist_ok=True)
        executable = package / f"terraform-provider-aws_v{PROVIDER_VERSION}"
        if not executable.exists() or executable.read_text() != script:
            executable.write_text(script)
        executable.chmod(0o755)
    sources = ", ".join(f'"{source}"' for source in PROVIDER_SOURCES)
    config = directory / "tofu.tfrc"
    config.write_text(
        "# CLI configuration of the offline rehearsal: hashicorp/aws is the test double.\n"
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = {_hcl_string(str(mirror))}\n"
        f"    include = [{sources}]\n"
        "  }\n"
        "  direct {\n"
        f"    exclude = [{sources}]\n"
        "  }\n"
        "}\n"
    )
    return config


def _hcl_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":  # pragma: no cover - manual use: print the CLI config path
    print(write_cli_config(Path(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())))
