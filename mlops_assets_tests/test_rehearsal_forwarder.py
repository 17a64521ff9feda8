"""The rehearsal's AWS emulator listens on loopback only; `expose()` makes it reachable on one
other address (in `sim`, the test bridge's, where the monitoring host's tracking server sends
its artifacts to the emulated S3). Here the other address is 127.0.0.2, still loopback."""

import os

import pytest

from mlops_assets.rehearsal.emulator import Ec2Emulator

pytestmark = pytest.mark.service

OTHER = "127.0.0.2"


def test_the_emulators_s3_answers_on_the_exposed_address_until_the_emulator_stops(tmp_path):
    import boto3
    import botocore.exceptions

    emulator = Ec2Emulator.start(tmp_path)
    try:
        with pytest.raises(ValueError, match="never on every interface"):
            emulator.expose(tmp_path, "0.0.0.0")
        endpoint = emulator.expose(tmp_path, OTHER)
        assert endpoint == f"http://{OTHER}:{emulator.port}"
        pid = Ec2Emulator.start(tmp_path).forwarders[OTHER]  # start() finds the running one
        assert emulator.expose(tmp_path, OTHER) == endpoint  # idempotent: the same forwarder
        recorded = Ec2Emulator.start(tmp_path)
        assert recorded.forwarders == {OTHER: pid}

        far = boto3.client("s3", endpoint_url=endpoint, region_name=emulator.region, **_keys())
        near = emulator.client("s3")
        near.create_bucket(Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": emulator.region})
        far.put_object(Bucket="artifacts", Key="mlflow/1/model.pkl", Body=b"x" * 300_000)  # several chunks
        assert near.get_object(Bucket="artifacts", Key="mlflow/1/model.pkl")["Body"].read() == b"x" * 300_000
    finally:
        assert Ec2Emulator.stop_recorded(tmp_path)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        boto3.client("s3", endpoint_url=endpoint, region_name=emulator.region, **_keys()).list_buckets()


def _keys() -> dict:
    return {"aws_access_key_id": "rehearsal", "aws_secret_access_key": "rehearsal"}


def test_bucket_policies_see_the_emulator_as_https_and_still_apply_their_other_statements(tmp_path):
    """infra_tf's TLS-only Deny lets HTTPS-equivalent requests through; a Deny on TLS requests
    (the condition inverted) refuses them, so the condition is evaluated, not dropped."""
    import json

    import botocore.exceptions

    emulator = Ec2Emulator.start(tmp_path)
    try:
        s3 = emulator.client("s3")
        s3.create_bucket(Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": emulator.region})

        def policy(secure: str) -> str:
            return json.dumps({"Version": "2012-10-17", "Statement": [{
                "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
                "Resource": ["arn:aws:s3:::artifacts", "arn:aws:s3:::artifacts/*"],
                "Condition": {"Bool": {"aws:SecureTransport": secure}}}]})

        s3.put_bucket_policy(Bucket="artifacts", Policy=policy("false"))
        s3.put_object(Bucket="artifacts", Key="mlflow/model.pkl", Body=b"model")
        assert s3.get_object(Bucket="artifacts", Key="mlflow/model.pkl")["Body"].read() == b"model"

        s3.put_bucket_policy(Bucket="artifacts", Policy=policy("true"))
        with pytest.raises(botocore.exceptions.ClientError, match="403"):
            s3.get_object(Bucket="artifacts", Key="mlflow/model.pkl")
    finally:
        Ec2Emulator.stop_recorded(tmp_path)
