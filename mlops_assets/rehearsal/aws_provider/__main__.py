"""Entry point that OpenTofu starts: `python -m mlops_assets.rehearsal.aws_provider`.

TEST DOUBLE of hashicorp/aws; see the package docstring."""

import sys

from mlops_assets.rehearsal.aws_provider._vendor.tf.runner import run_provider
from mlops_assets.rehearsal.aws_provider.provider import AwsTestDouble

if __name__ == "__main__":
    run_provider(AwsTestDouble(), sys.argv)
