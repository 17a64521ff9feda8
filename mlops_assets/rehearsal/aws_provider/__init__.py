"""TEST DOUBLE of the `hashicorp/aws` OpenTofu provider, backed by an EC2 API emulator.

This is not the AWS provider. The real one cannot be downloaded on the machines that build
this project, so the offline rehearsal (`MLOPS_TARGET=sim`) and the infra tests serve this
Python provider under the name `registry.terraform.io/hashicorp/aws` from a
`filesystem_mirror`, and it forwards every call through boto3 to a moto server on loopback
(`AWS_ENDPOINT_URL`). It implements only what `infra_tf/` uses, with the real provider's
attribute names:

- resources: `aws_key_pair`, `aws_security_group`, `aws_vpc_security_group_ingress_rule`,
  `aws_vpc_security_group_egress_rule`, `aws_instance` (with `metadata_options`,
  `root_block_device`, `tags`);
- data source: `aws_ami` (owners, filters, most_recent), answered from the emulator's images.

Every read asks the emulator again, so drift made in the emulator shows in the next plan.
Simplifications compared with the real provider: changing any argument but `tags` replaces
the resource (the real one updates some in place), `default_tags` and most optional
arguments are absent, and there is no retry logic.

Built on the `tf` framework (vendored in `_vendor/`, see its README for why).
"""

from __future__ import annotations

from .mirror import PROVIDER_VERSION, write_cli_config

__all__ = ["PROVIDER_VERSION", "write_cli_config"]
