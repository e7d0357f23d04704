"""boto3 against a running ferry-proxy whose data set is a local directory.
Every check compares with the files on disk. Exits non-zero on any failure."""

import hashlib
import os
import sys
import tempfile

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def main() -> None:
    endpoint, bucket, root = sys.argv[1], sys.argv[2], sys.argv[3]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    on_disk = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            on_disk[os.path.relpath(path, root)] = open(path, "rb").read()

    # list_objects_v2, paginated in small pages, sees every key in order.
    paginator = s3.get_paginator("list_objects_v2")
    listed = []
    pages = 0
    for page in paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": 3}):
        pages += 1
        listed += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    assert listed == sorted((k, len(v)) for k, v in on_disk.items()), listed
    assert pages == -(-len(on_disk) // 3), pages

    # Delimiter: top-level common prefixes and keys.
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    prefixes = [p["Prefix"] for p in top.get("CommonPrefixes", [])]
    keys = [o["Key"] for o in top.get("Contents", [])]
    assert prefixes == sorted({k.split("/")[0] + "/" for k in on_disk if "/" in k}), prefixes
    assert keys == sorted(k for k in on_disk if "/" not in k), keys
    nested = s3.list_objects_v2(Bucket=bucket, Prefix="dir/", Delimiter="/")
    assert [o["Key"] for o in nested.get("Contents", [])] == sorted(
        k for k in on_disk if k.startswith("dir/") and "/" not in k[4:]
    )

    # list_objects (v1) with a marker.
    v1 = s3.list_objects(Bucket=bucket, MaxKeys=2)
    assert v1["IsTruncated"] and len(v1["Contents"]) == 2

    big_key = max(on_disk, key=lambda k: len(on_disk[k]))
    big = on_disk[big_key]
    size = len(big)

    # head_object.
    head = s3.head_object(Bucket=bucket, Key=big_key)
    assert head["ContentLength"] == size, head
    etag = head["ETag"]

    # get_object: whole and every Range form.
    assert s3.get_object(Bucket=bucket, Key=big_key)["Body"].read() == big
    for header, want in [
        ("bytes=0-99", big[0:100]),
        ("bytes=1000-", big[1000:]),
        ("bytes=-777", big[-777:]),
        (f"bytes=5-{size * 2}", big[5:]),
    ]:
        got = s3.get_object(Bucket=bucket, Key=big_key, Range=header)
        assert got["Body"].read() == want, header
        assert got["ContentRange"].startswith("bytes "), got["ContentRange"]

    # Errors come back as S3 error codes.
    for kwargs, code in [
        ({"Key": big_key, "Range": f"bytes={size}-"}, "InvalidRange"),
        ({"Key": "missing/key.bin"}, "NoSuchKey"),
        ({"Key": big_key, "IfMatch": '"not-the-etag"'}, "PreconditionFailed"),
    ]:
        try:
            s3.get_object(Bucket=bucket, **kwargs)
            raise AssertionError(f"{kwargs} should fail")
        except ClientError as err:
            assert err.response["Error"]["Code"] == code, (kwargs, err.response)
    try:
        s3.get_object(Bucket=bucket, Key=big_key, IfNoneMatch=etag)
        raise AssertionError("If-None-Match should give 304")
    except ClientError as err:
        assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    try:
        s3.get_object(Bucket="no-such-bucket", Key="x")
        raise AssertionError("unknown bucket")
    except ClientError as err:
        assert err.response["Error"]["Code"] == "NoSuchBucket"

    # download_file: the transfer manager splits big objects into parallel ranges.
    with tempfile.TemporaryDirectory() as scratch:
        target = os.path.join(scratch, "download")
        s3.download_file(bucket, big_key, target)
        got = open(target, "rb").read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()

    # list_buckets names the data set.
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    print("boto3: all checks passed")


if __name__ == "__main__":
    main()
