"""Entry point that OpenTofu starts: `python -m mlops_assets_tests.rehearsal.aws_provider`.

TEST DOUBLE of hashicorp/aws; see the package docstring."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "_vendor"))

from tf.runner import run_provider  # noqa: E402

from mlops_assets_tests.rehearsal.aws_provider.provider import AwsTestDouble  # noqa: E402

if __name__ == "__main__":
    run_provider(AwsTestDouble(), sys.argv)
