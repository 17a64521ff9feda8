"""TEST DOUBLE of the `hashicorp/aws` OpenTofu provider, backed by an EC2 API emulator.

This is not the AWS provider. The real one cannot be downloaded on the machines that build
this project, so the offline rehearsal (`MLOPS_TARGET=sim`) and the infra tests serve this
Python provider under the name `registry.terraform.io/hashicorp/aws` from a
`filesystem_mirror`, and it forwards every call through boto3 to a moto server on loopback
(`AWS_ENDPOINT_URL`, or `AWS_ENDPOINT_URL_EC2` / `_S3` / `_IAM`: the one server answers EC2,
S3 and IAM; S3 is addressed path-style). It implements only what `infra_tf/` uses, with the
real provider's attribute names and ids:

- EC2: `aws_key_pair`, `aws_security_group`, `aws_vpc_security_group_ingress_rule`,
  `aws_vpc_security_group_egress_rule`, `aws_instance` (with `metadata_options`,
  `root_block_device`, `iam_instance_profile` (changed in place), `tags`);
- S3 (id: the bucket's name): `aws_s3_bucket` (`force_destroy` deletes every object version
  and delete marker first), `aws_s3_bucket_public_access_block`,
  `aws_s3_bucket_server_side_encryption_configuration`, `aws_s3_bucket_versioning` (destroy
  suspends versioning, a bucket never versioned reads as `Disabled`),
  `aws_s3_bucket_lifecycle_configuration` (`filter` prefix, `expiration`,
  `noncurrent_version_expiration`, `abort_incomplete_multipart_upload`), `aws_s3_bucket_policy`;
- IAM: `aws_iam_role` (id: name), `aws_iam_role_policy` (id: `role:policy`),
  `aws_iam_instance_profile` (id: name, one role);
- data source: `aws_ami` (owners, filters, most_recent), answered from the emulator's images.

Every read asks the emulator again, so drift made in the emulator shows in the next plan, and
a resource deleted there reads as gone (planned again); policy documents that mean the same
JSON read back as configured. Simplifications compared with the real provider: changing an
EC2 argument but `tags` (and `iam_instance_profile`) replaces the resource (the real one
updates some in place), nested blocks are sets (the real provider has lists for some),
`default_tags` and most optional arguments are absent, and there is no retry logic.
moto's own limits show through: it applies a bucket policy's Deny to object requests
without evaluating its Condition, so with infra_tf/'s TLS-only policy in place moto refuses
every object read and write (S3 refuses only plain HTTP).

Built on the `tf` framework (vendored in `_vendor/`, see its README for why).
"""

from __future__ import annotations

from .mirror import PROVIDER_VERSION, write_cli_config

__all__ = ["PROVIDER_VERSION", "write_cli_config"]
