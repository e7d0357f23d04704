"""Tell a Ferry sidecar the order an epoch will read, so it fetches ahead.

The sidecar's front door takes an epoch's read order at
``POST /v1/prefetch/{bucket}``: the keys one per line, or JSON naming a key
list (sent once, then reused) and a permutation of it. ``OrderedSampler``
wraps any PyTorch-style sampler and posts each epoch's order before it yields
the first index; the data is then read as before, with any S3 client.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Any, Iterable, Iterator, Optional, Sequence

__all__ = [
    "OrderedSampler",
    "PrefetchClient",
    "PrefetchError",
    "ShuffleSampler",
    "shuffle",
]

DEFAULT_ENDPOINT = "http://127.0.0.1:4140"
_MASK = (1 << 64) - 1


def shuffle(n: int, seed: int) -> list:
    """The sidecar's ``shuffle`` permutation of ``range(n)``.

    Fisher-Yates from the top; the swap partner of ``i`` is
    ``(x * (i + 1)) >> 64`` for the next SplitMix64 output ``x``.
    """
    order = list(range(n))
    state = seed & _MASK
    for i in range(n - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & _MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        z ^= z >> 31
        j = (z * (i + 1)) >> 64
        order[i], order[j] = order[j], order[i]
    return order


class PrefetchError(Exception):
    """The sidecar refused an order (``status`` and its ``code`` say why)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class PrefetchClient:
    """The prefetch endpoint of one bucket on one sidecar."""

    def __init__(self, bucket: str, endpoint: Optional[str] = None, timeout: float = 30.0):
        self.bucket = bucket
        self.endpoint = (endpoint or os.environ.get("FERRY_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.timeout = timeout

    @property
    def url(self) -> str:
        return f"{self.endpoint}/v1/prefetch/{urllib.parse.quote(self.bucket, safe='')}"

    def post_keys(self, keys: Iterable[str]) -> dict:
        """Posts an order written out: the keys, one per line, in read order."""
        body = "\n".join(keys).encode()
        return self._call("POST", body, "text/plain")

    def post_indices(self, indices: Sequence[int], keys: Optional[Sequence[str]] = None) -> dict:
        """Posts ``keys[i] for i in indices``; without ``keys`` the sidecar
        reuses the key list of the order this one replaces."""
        order: dict = {"permutation": {"kind": "indices", "indices": [int(i) for i in indices]}}
        if keys is not None:
            order["keys"] = list(keys)
        return self._post_json(order)

    def post_shuffle(
        self,
        seed: int,
        keys: Optional[Sequence[str]] = None,
        prefix: Optional[str] = None,
        epochs: int = 1,
    ) -> dict:
        """Posts ``shuffle(len(keys), seed)`` over ``keys``, over every key
        under ``prefix`` (in listing order), or over the previous key list;
        with ``epochs`` > 1, that many epochs in turn, seeds ``seed``,
        ``seed + 1``, ... (a ``ShuffleSampler``'s next epochs)."""
        permutation: dict = {"kind": "shuffle", "seed": int(seed) & _MASK}
        if epochs != 1:
            permutation["epochs"] = int(epochs)
        order: dict = {"permutation": permutation}
        if keys is not None:
            order["keys"] = list(keys)
        if prefix is not None:
            order["prefix"] = prefix
        return self._post_json(order)

    def status(self) -> Optional[dict]:
        """The current order's progress, or ``None`` if there is none."""
        try:
            return self._call("GET", None, None)
        except PrefetchError as err:
            if err.code == "NoSuchOrder":
                return None
            raise

    def stop(self) -> bool:
        """Stops the current order; whether there was one."""
        try:
            self._call("DELETE", None, None)
            return True
        except PrefetchError as err:
            if err.code == "NoSuchOrder":
                return False
            raise

    def _post_json(self, order: dict) -> dict:
        body = json.dumps(order, separators=(",", ":")).encode()
        return self._call("POST", body, "application/json")

    def _call(self, method: str, body: Optional[bytes], content_type: Optional[str]) -> Any:
        request = urllib.request.Request(self.url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as err:
            text = err.read()
            try:
                answer = json.loads(text)
                code, message = answer.get("code", "Error"), answer.get("message", "")
            except ValueError:
                code, message = "Error", text.decode(errors="replace")
            raise PrefetchError(err.code, code, message) from None
        return json.loads(text) if text else {}


class ShuffleSampler:
    """Yields ``shuffle(n, seed + epoch)``: the order a sidecar computes from a seed."""

    def __init__(self, n: int, seed: int = 0):
        if n < 0:
            raise ValueError("n must not be negative")
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def epoch_seed(self) -> int:
        return (self.seed + self.epoch) & _MASK

    def __iter__(self) -> Iterator[int]:
        return iter(shuffle(self.n, self.epoch_seed))

    def __len__(self) -> int:
        return self.n


def _flatten(items: list) -> list:
    """Sample indices of what a sampler yielded (a batch sampler yields lists)."""
    flat = []
    for item in items:
        if isinstance(item, (list, tuple)):
            flat.extend(int(i) for i in item)
        else:
            flat.append(int(item))
    return flat


class OrderedSampler:
    """Wraps a sampler: each epoch's order is posted before its first index.

    ``keys[i]`` is the S3 key of sample ``i``. Yields exactly what the wrapped
    sampler yields (indices, or batches of them). Posting never fails the
    epoch: a refused or unreachable sidecar is a warning, and reads go on
    without prefetch.

    Wrapping a ``ShuffleSampler``, each epoch's post also holds the next
    ``epochs_ahead - 1`` epochs' order (2 by default: this epoch and the
    next). The sidecar fetches the next epoch's first samples while this
    one ends, which short epochs need, and keeps them when the next post
    continues the order it has (call ``set_epoch`` every epoch, as with
    ``DistributedSampler``). Other samplers post each epoch's order.
    """

    def __init__(
        self,
        sampler: Iterable,
        keys: Sequence[str],
        bucket: str,
        endpoint: Optional[str] = None,
        client: Optional[PrefetchClient] = None,
        epochs_ahead: int = 2,
    ):
        if epochs_ahead < 1:
            raise ValueError("epochs_ahead must be at least 1")
        self.sampler = sampler
        self.keys = keys
        self.client = client or PrefetchClient(bucket, endpoint)
        self.epochs_ahead = epochs_ahead
        self._keys_sent = False
        self.last_status: Optional[dict] = None

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        if isinstance(self.sampler, ShuffleSampler) and self.sampler.n == len(self.keys):
            seed, ahead = self.sampler.epoch_seed, self.epochs_ahead
            self._post(lambda keys: self.client.post_shuffle(seed, keys=keys, epochs=ahead))
            return iter(self.sampler)
        items = list(iter(self.sampler))
        indices = _flatten(items)
        self._post(lambda keys: self.client.post_indices(indices, keys=keys))
        return iter(items)

    def _post(self, post) -> None:
        try:
            if not self._keys_sent:
                self.last_status = post(self.keys)
                self._keys_sent = True
                return
            try:
                self.last_status = post(None)
            except PrefetchError as err:
                if err.code != "NoPreviousKeys":
                    raise
                # The sidecar restarted (or another order replaced its keys).
                self.last_status = post(self.keys)
        except (PrefetchError, OSError) as err:
            self.last_status = None
            self._keys_sent = False
            warnings.warn(f"ferry: the epoch's order was not posted ({err}); reading without prefetch")
