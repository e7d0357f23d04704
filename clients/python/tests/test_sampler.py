"""The wrapper on its own, and against a running sidecar with boto3, s3fs
and the AWS CRT client behind s3torchconnector.

The sidecar tests need ``FERRY_ENDPOINT`` (the sidecar's front door),
``FERRY_ADMIN`` (its admin port), ``FERRY_BUCKET`` and ``FERRY_EXPECTED``
(a directory with ``keys`` listing sample i's key on line i and the file
``<i>`` holding its bytes); Ferry's ``cargo test`` starts a sidecar over a
worker and sets them. Without them those tests are skipped.
"""

import os
import time
import urllib.request
import warnings

import pytest

from ferry_prefetch import OrderedSampler, PrefetchClient, PrefetchError, ShuffleSampler, shuffle


def test_shuffle_is_the_sidecars():
    # The same list the sidecar's Rust test pins for seed 42.
    assert shuffle(10, 42) == [8, 3, 6, 5, 4, 0, 9, 2, 1, 7]
    assert sorted(shuffle(1000, 7)) == list(range(1000))
    assert shuffle(0, 1) == [] and shuffle(1, 1) == [0]


class Recorder:
    """Records posts instead of sending them (the wrapper's own logic)."""

    def __init__(self, refuse_reuse_once=False):
        self.posts = []
        self.refuse_reuse_once = refuse_reuse_once

    def post_indices(self, indices, keys=None):
        return self._post(("indices", list(indices), keys))

    def post_shuffle(self, seed, keys=None, prefix=None, epochs=1):
        if epochs != 1:
            return self._post(("shuffle", seed, keys, epochs))
        return self._post(("shuffle", seed, keys))

    def _post(self, post):
        if post[2] is None and self.refuse_reuse_once:
            self.refuse_reuse_once = False
            raise PrefetchError(409, "NoPreviousKeys", "no keys")
        self.posts.append(post)
        return {"samples": 0}


def test_the_wrapper_yields_what_it_wraps_after_posting_the_order():
    keys = [f"k{i}" for i in range(6)]
    recorder = Recorder()
    sampler = OrderedSampler([5, 3, 1, 0, 2, 4], keys, "b", client=recorder)
    assert list(sampler) == [5, 3, 1, 0, 2, 4]
    assert recorder.posts == [("indices", [5, 3, 1, 0, 2, 4], keys)]
    assert list(sampler) == [5, 3, 1, 0, 2, 4]
    assert recorder.posts[1] == ("indices", [5, 3, 1, 0, 2, 4], None), "keys go once"
    # A batch sampler's batches are posted flat and yielded as they were.
    batches = OrderedSampler([[1, 2], [0, 3]], keys, "b", client=recorder)
    assert list(batches) == [[1, 2], [0, 3]]
    assert recorder.posts[-1] == ("indices", [1, 2, 0, 3], keys)


def test_a_shuffle_sampler_is_posted_as_its_seed_each_epoch():
    keys = [f"k{i}" for i in range(50)]
    recorder = Recorder(refuse_reuse_once=True)
    inner = ShuffleSampler(50, seed=9)
    sampler = OrderedSampler(inner, keys, "b", client=recorder, epochs_ahead=1)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert first == shuffle(50, 9) and second == shuffle(50, 10)
    # Epoch 1 reused the keys, was refused (a restarted sidecar), resent them.
    assert recorder.posts == [("shuffle", 9, keys), ("shuffle", 10, keys)]


def test_each_epoch_posts_its_order_and_the_next_epochs_ahead():
    keys = [f"k{i}" for i in range(20)]
    recorder = Recorder()
    inner = ShuffleSampler(20, seed=4)
    sampler = OrderedSampler(inner, keys, "b", client=recorder, epochs_ahead=3)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders == [shuffle(20, 4 + e) for e in range(4)], "yields what it wraps"
    assert recorder.posts == [
        ("shuffle", 4, keys, 3),
        ("shuffle", 5, None, 3),
        ("shuffle", 6, None, 3),
        ("shuffle", 7, None, 3),
    ]
    by_default = OrderedSampler(inner, keys, "b", client=recorder)
    list(by_default)
    assert recorder.posts[-1][-1] == 2, "this epoch and the next by default"
    with pytest.raises(ValueError):
        OrderedSampler(inner, keys, "b", client=recorder, epochs_ahead=0)


def test_an_unreachable_sidecar_is_a_warning_not_an_error():
    sampler = OrderedSampler([0, 1], ["a", "b"], "b", endpoint="http://127.0.0.1:9")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(sampler) == [0, 1]
    assert any("not posted" in str(w.message) for w in caught)


# --- against a running sidecar --------------------------------------------

ENDPOINT = os.environ.get("FERRY_ENDPOINT")
needs_sidecar = pytest.mark.skipif(not ENDPOINT, reason="no sidecar: FERRY_ENDPOINT is unset")


def expected():
    root = os.environ["FERRY_EXPECTED"]
    with open(os.path.join(root, "keys")) as f:
        keys = [line.rstrip("\n") for line in f if line.strip()]
    return keys, lambda i: open(os.path.join(root, str(i)), "rb").read()


def memory_hits():
    text = urllib.request.urlopen(f"http://{os.environ['FERRY_ADMIN']}/metrics").read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("cache_hits_total{") and 'tier="memory"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_fetched(client, samples):
    deadline = time.monotonic() + 20
    while True:
        status = client.status()
        if status and status["fetched"] + status["failed"] >= samples:
            assert status["failed"] == 0, status
            return status
        assert time.monotonic() < deadline, f"the sidecar never fetched the order: {status}"
        time.sleep(0.02)


def s3_client():
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


@needs_sidecar
def test_boto3_reads_in_the_posted_order_hit():
    bucket = os.environ["FERRY_BUCKET"]
    keys, content = expected()
    s3 = s3_client()
    sampler = OrderedSampler(ShuffleSampler(len(keys), seed=3), keys, bucket, epochs_ahead=1)
    client = sampler.client
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = iter(sampler)
        assert sampler.last_status["samples"] == len(keys)
        wait_fetched(client, len(keys))
        before = memory_hits()
        for index in order:
            body = s3.get_object(Bucket=bucket, Key=keys[index])["Body"].read()
            assert body == content(index), keys[index]
        assert memory_hits() - before == len(keys), f"epoch {epoch}: every read prefetched"


@needs_sidecar
def test_each_epoch_posted_with_the_next_keeps_what_was_fetched_for_it():
    bucket = os.environ["FERRY_BUCKET"]
    keys, content = expected()
    s3 = s3_client()
    sampler = OrderedSampler(ShuffleSampler(len(keys), seed=30), keys, bucket)
    before = memory_hits()
    for epoch in range(2):
        sampler.set_epoch(epoch)
        order = iter(sampler)
        assert sampler.last_status["samples"] == 2 * len(keys), "this epoch and the next"
        if epoch == 1:
            # What was fetched for epoch 1 under the first post stayed.
            assert sampler.last_status["buffered_bytes"] > 0, sampler.last_status
        wait_fetched(sampler.client, len(keys))
        for index in order:
            body = s3.get_object(Bucket=bucket, Key=keys[index])["Body"].read()
            assert body == content(index), keys[index]
        if epoch == 0:
            # Epoch 1's samples come while epoch 0 ends.
            wait_fetched(sampler.client, 2 * len(keys))
    assert memory_hits() - before == 2 * len(keys), "every read of both epochs prefetched"
    assert sampler.client.status()["reads"] == 2 * len(keys)


@needs_sidecar
def test_s3fs_reads_through_the_wrapper():
    import s3fs

    bucket = os.environ["FERRY_BUCKET"]
    keys, content = expected()
    fs = s3fs.S3FileSystem(
        key="x",
        secret="x",
        client_kwargs={"endpoint_url": ENDPOINT, "region_name": "us-east-1"},
        use_listings_cache=False,
    )
    # Any sampler: a plain list of indices, posted as indices.
    order = list(reversed(range(len(keys))))
    sampler = OrderedSampler(order, keys, bucket)
    indices = list(sampler)
    assert indices == order
    wait_fetched(sampler.client, len(keys))
    before = memory_hits()
    for index in indices:
        with fs.open(f"{bucket}/{keys[index]}", "rb") as f:
            assert f.read() == content(index), keys[index]
    assert memory_hits() - before >= len(keys), "every sample's chunk was prefetched"


@needs_sidecar
def test_the_crt_client_behind_s3torchconnector_reads_in_the_posted_order():
    # s3torchconnector's datasets read through this client (AWS CRT); it
    # needs no PyTorch of its own.
    from s3torchconnectorclient._mountpoint_s3_client import MountpointS3Client

    bucket = os.environ["FERRY_BUCKET"]
    keys, content = expected()
    crt = MountpointS3Client(
        region="us-east-1", endpoint=ENDPOINT, unsigned=True, force_path_style=True
    )
    listed = [o.key for page in crt.list_objects(bucket) for o in page.object_info]
    assert sorted(listed) == sorted(keys)
    sampler = OrderedSampler(ShuffleSampler(len(keys), seed=21), keys, bucket)
    order = list(sampler)
    wait_fetched(sampler.client, len(keys))
    before = memory_hits()
    for index in order:
        assert b"".join(crt.get_object(bucket, keys[index])) == content(index), keys[index]
    assert memory_hits() - before >= len(keys), "every sample's chunk was prefetched"


@needs_sidecar
def test_the_sidecar_refuses_clearly():
    with pytest.raises(PrefetchError) as refused:
        PrefetchClient("no-such-bucket").post_keys(["a"])
    assert refused.value.status == 404 and refused.value.code == "NoSuchBucket"
    with pytest.raises(PrefetchError) as refused:
        PrefetchClient(os.environ["FERRY_BUCKET"]).post_keys([])
    assert refused.value.status == 400 and refused.value.code == "MalformedOrder"
