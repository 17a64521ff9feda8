"""The tracking server's database backups in S3, run by tasks/backup.yml and tasks/restore.yml
inside a short-lived container of the tracking server's image, with the server's S3 settings
(MLFLOW_S3_ENDPOINT_URL, AWS_DEFAULT_REGION, AWS_SHARED_CREDENTIALS_FILE or, on aws, the
instance profile through IMDSv2). The data goes through standard input and output; only
object keys and sizes are printed.

    put BUCKET KEY            standard input to a new object (refused if the key exists)
    get BUCKET KEY            the object to standard output
    newest BUCKET PREFIX      the newest backup's key under PREFIX/
    prune BUCKET PREFIX KEEP  delete all but the newest KEEP backups under PREFIX/, print them

Only keys named like a backup (mlflow-YYYYMMDDTHHMMSSZ.tar, UTC, so their order is their
age) are counted and pruned: nothing else under the prefix is ever deleted. Exit status 3: no
such object, or no backup.
"""

import os
import re
import shutil
import sys

import boto3
from botocore.exceptions import ClientError

NAME = re.compile(r"mlflow-\d{8}T\d{6}Z\.tar")
MISSING = 3


def client():
    return boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)


def exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def backups(s3, bucket: str, prefix: str) -> list[str]:
    start = prefix.strip("/") + "/" if prefix.strip("/") else ""
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
        keys += [item["Key"] for item in page.get("Contents", []) if NAME.fullmatch(item["Key"][len(start):])]
    return sorted(keys)


class Counted:
    """Standard input, counting what was read (compared with the stored object's size)."""

    def __init__(self, stream):
        self.stream, self.size = stream, 0

    def read(self, size=-1):
        data = self.stream.read(size)
        self.size += len(data)
        return data


def main(argv: list[str]) -> int:
    command, bucket, *rest = argv
    s3 = client()
    if command == "put":
        (key,) = rest
        if exists(s3, bucket, key):
            print(f"s3://{bucket}/{key} exists already: not overwritten", file=sys.stderr)
            return 1
        source = Counted(sys.stdin.buffer)
        s3.upload_fileobj(source, bucket, key)
        stored = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if stored != source.size or source.size == 0:
            print(f"s3://{bucket}/{key}: {stored} bytes stored, {source.size} read", file=sys.stderr)
            return 1
        print(stored)
    elif command == "get":
        (key,) = rest
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                print(f"no object s3://{bucket}/{key}", file=sys.stderr)
                return MISSING
            raise
        shutil.copyfileobj(body, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()
    elif command == "newest":
        (prefix,) = rest
        found = backups(s3, bucket, prefix)
        if not found:
            print(f"no backup under s3://{bucket}/{prefix.strip('/')}/", file=sys.stderr)
            return MISSING
        print(found[-1])
    elif command == "prune":
        prefix, keep = rest
        if int(keep) < 1:
            print("KEEP must be at least 1", file=sys.stderr)
            return 2
        for key in backups(s3, bucket, prefix)[: -int(keep)]:
            s3.delete_object(Bucket=bucket, Key=key)
            print(key)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
