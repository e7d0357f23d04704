"""A real S3 origin for the tests: moto's server on a free loopback port,
with one bucket of deterministic objects. Prints one JSON line with the
endpoint, then serves until its stdin closes (the test process ends)."""

import json
import sys

import boto3
from moto.server import ThreadedMotoServer


def object_bytes(index: int, size: int) -> bytes:
    """Same formula as the Rust test: byte j of object i is (i*7 + j) % 251."""
    return bytes((index * 7 + j) % 251 for j in range(size))


def main() -> None:
    bucket = sys.argv[1]
    sizes = [int(s) for s in sys.argv[2].split(",")]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=bucket)
    for index, size in enumerate(sizes):
        s3.put_object(Bucket=bucket, Key=f"data/obj-{index:03}.bin", Body=object_bytes(index, size))
    s3.put_object(Bucket=bucket, Key="other/skip.bin", Body=b"not in the data set")
    print(json.dumps({"endpoint": endpoint}), flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
