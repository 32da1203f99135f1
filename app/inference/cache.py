"""An opt-in result cache for deterministic models (FRAMEWORM_RESULT_CACHE=memory|redis).

Keyed by the model version's identity (a digest of its whole manifest: name, version, the
artefact's sha256, architecture and signature), parameters and a hash of the decoded input
arrays (dtype and shape included), so results are never shared across versions, nor between
two registries that each hold a version of the same name. Only manifests marked
`deterministic` are cached: a generative model drawing from a seedless RNG is not. In memory it
is an LRU bounded in entries and in bytes; with Redis it is shared by replicas, with a TTL, and
a slow or down Redis, or an entry it cannot read or that does not fit the request (its outputs'
number, dtypes and shapes), is a miss (bounded by a short timeout), never an error. After a
failure Redis is skipped for a second at a time, one call probing it, and writes run in the
background: an outage costs a request no wait past the first failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import orjson

from app.production.redis_client import redis_options
from app.telemetry.metrics import Metrics
from models.manifest import ModelManifest, TensorSpec
from models.tensors import NUMPY_DTYPES

log = logging.getLogger("frameworm.cache")


# Manifests are frozen: each one's identity is computed once (a few live at a time). Kept with
# the manifest itself, so that an id reused after it is gone cannot match.
_IDENTITIES: dict[int, tuple[ModelManifest, str]] = {}


def _identity(manifest: ModelManifest) -> str:
    entry = _IDENTITIES.get(id(manifest))
    if entry is None or entry[0] is not manifest:
        if len(_IDENTITIES) >= 64:
            _IDENTITIES.clear()
        entry = _IDENTITIES[id(manifest)] = (manifest, manifest.identity())
    return entry[1]


def cache_key(manifest: ModelManifest, arrays: list[np.ndarray], parameters: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{_identity(manifest)}\0".encode())
    digest.update(orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS))
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _pack(outputs: list[np.ndarray]) -> bytes:
    header = orjson.dumps([[o.dtype.str, list(o.shape)] for o in outputs])
    return len(header).to_bytes(4, "big") + header + b"".join(o.tobytes() for o in outputs)


def _unpack(blob: bytes) -> list[np.ndarray]:
    """What `_pack` wrote; ValueError for anything else (another layout, a stray value)."""
    size = int.from_bytes(blob[:4], "big")
    offset, outputs = 4 + size, []
    for dtype_name, shape in orjson.loads(blob[4 : 4 + size]):
        dtype = np.dtype(dtype_name)
        if dtype.kind not in "biuf" or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError("not a packed output")
        array = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=offset)
        outputs.append(array.reshape(shape))
        offset += array.nbytes
    if offset != len(blob):
        raise ValueError("not a packed output")
    return outputs


def _misfit(outputs: list[np.ndarray], specs: Sequence[TensorSpec], items: int) -> str | None:
    """Why `outputs` cannot answer a request of `items` items to these output specs, or None.

    A readable entry may still be another's (another layout, a stray writer): served, a wrong
    shape or dtype was a wrong answer (bool as false, a [3, 7] for one item) or a 500 (a
    big-endian or 0-d array the encoders refuse)."""
    if len(outputs) != len(specs):
        return "has the wrong number of outputs"
    for out, spec in zip(outputs, specs, strict=True):
        if out.dtype != NUMPY_DTYPES[spec.dtype]:  # native byte order included: >f8 is not <f8
            return "has an output of the wrong dtype"
        if out.shape != (items, *spec.shape[1:]):
            return "has an output of the wrong shape"
    return None


class ResultCache(Protocol):
    async def get(
        self, key: str, specs: Sequence[TensorSpec], items: int
    ) -> list[np.ndarray] | None: ...
    async def put(self, key: str, outputs: list[np.ndarray]) -> None: ...
    async def close(self) -> None: ...


class MemoryCache:
    """An LRU bounded in entries and in the bytes of the outputs it keeps (whichever binds
    first): outputs vary from a few bytes to megabytes a request, so entries alone bound
    nothing. An entry larger than the byte bound is not kept."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[str, list[np.ndarray]] = OrderedDict()

    async def get(
        self, key: str, specs: Sequence[TensorSpec], items: int
    ) -> list[np.ndarray] | None:
        """Unchecked: entries are this process's own outputs, under keys that fix the version
        and the inputs' shapes, so they fit the request by construction."""
        outputs = self._entries.get(key)
        if outputs is not None:
            self._entries.move_to_end(key)
        return outputs

    async def put(self, key: str, outputs: list[np.ndarray]) -> None:
        size = sum(out.nbytes for out in outputs)
        if size > self.max_bytes:
            return
        # A request's outputs are views of its whole batch's: a copy keeps only its own rows
        # alive, and read-only copies keep one hit from changing what the next one gets.
        kept = [np.array(out, copy=True) for out in outputs]
        for out in kept:
            out.flags.writeable = False
        self._drop(key)
        self._entries[key] = kept
        self.nbytes += size
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))  # the least recently used

    def _drop(self, key: str) -> None:
        dropped = self._entries.pop(key, None)
        if dropped is not None:
            self.nbytes -= sum(out.nbytes for out in dropped)

    async def close(self) -> None:
        self._entries.clear()
        self.nbytes = 0


class RedisCache:
    SAME_OUTAGE_S = 60.0  # failures of reads and of writes this close are one outage
    # After a failure, reads (or writes) skip Redis this long, then one call probes it: a hung
    # Redis otherwise cost every request its whole timeout, twice, for as long as it hung.
    RETRY_S = 1.0

    def __init__(
        self, url: str, ttl_s: int, timeout_s: float = 0.05, max_connections: int = 100
    ) -> None:
        import redis.asyncio

        # Blocking: the default pool fails at once past 100 connections, so a burst of requests
        # was a burst of misses (and failure logs) while Redis was fine. Waits are bounded by
        # each call's timeout.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            **redis_options(timeout_s, asynchronous=True),
        )
        self._client = redis.asyncio.Redis.from_pool(pool)
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        # What fails now, "read" and/or "write". They fail apart (a TTL Redis refuses, a full
        # Redis with noeviction: every write fails while every read succeeds), so a read that
        # succeeds does not end an outage of writes, and each backs off on its own.
        self._failing: set[str] = set()
        self._retry_at: dict[str, float] = {}  # when a failing "read"/"write" is tried again
        self._warned_at = 0.0
        # Writes in flight. The loop keeps only weak references to tasks: unreferenced, one
        # could be collected mid-write. Bounded to half the pool, so writes never take every
        # connection from the lookups that responses wait for.
        self._writes: set[asyncio.Task[None]] = set()
        self.max_writes = max(1, max_connections // 2)
        self._said: set[str] = set()  # the kinds of unusable entry logged so far

    def _failed(self, what: str, exc: Exception) -> None:
        # Once per outage at warning level (every request is a miss meanwhile: only the
        # latency and the model's load show it otherwise), then quietly until it recovers.
        # Writes happen only on misses, so one failed write may stay marked long after: a
        # failure of the other kind, past SAME_OUTAGE_S after the warning, is a new outage.
        now = time.monotonic()
        if what not in self._failing and (
            not self._failing or now - self._warned_at > self.SAME_OUTAGE_S
        ):
            log.warning("result cache %s failed (%s): serving without it", what, type(exc).__name__)
            self._warned_at = now
        else:
            log.debug("result cache %s failed: %s", what, type(exc).__name__)
        self._failing.add(what)
        self._retry_at[what] = now + self.RETRY_S

    def _succeeded(self, what: str) -> None:
        self._retry_at.pop(what, None)
        if what in self._failing:
            self._failing.discard(what)
            if not self._failing:
                log.info("result cache reachable again")

    def _skips(self, what: str) -> bool:
        """Whether this read or write skips Redis: for RETRY_S after a failure; then this call
        probes it, and the others skip another RETRY_S unless it succeeds."""
        retry_at = self._retry_at.get(what)
        if retry_at is None:
            return False
        now = time.monotonic()
        if now < retry_at:
            return True
        self._retry_at[what] = now + self.RETRY_S
        return False

    def _unusable(self, key: str, why: str) -> None:
        # Once per kind: a stray writer's entries would otherwise log on every request.
        if why in self._said:
            log.debug("result cache entry %s %s: a miss", key[:16], why)
            return
        self._said.add(why)
        log.warning("result cache entry %s %s: a miss (said once)", key[:16], why)

    async def get(
        self, key: str, specs: Sequence[TensorSpec], items: int
    ) -> list[np.ndarray] | None:
        """The outputs stored under `key` if they fit `items` items of these output specs."""
        if self._skips("read"):
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                blob = await self._client.get(f"frameworm:result:{key}")
        except Exception as exc:  # down or slow: a miss
            self._failed("read", exc)
            return None
        self._succeeded("read")
        if not isinstance(blob, bytes) or not blob:
            return None
        try:
            outputs = _unpack(blob)
        except Exception:  # not ours, another layout: numpy and orjson raise several types
            self._unusable(key, "is unreadable")
            return None
        misfit = _misfit(outputs, specs, items)
        if misfit is not None:
            self._unusable(key, misfit)
            return None
        return outputs

    async def put(self, key: str, outputs: list[np.ndarray]) -> None:
        """Starts the write and returns: no response waits for Redis. Dropped (a later miss
        writes it) while writes back off or `max_writes` are in flight."""
        if len(self._writes) >= self.max_writes or self._skips("write"):
            return
        task = asyncio.create_task(self._write(key, _pack(outputs)), name="result-cache-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, blob: bytes) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._client.set(f"frameworm:result:{key}", blob, ex=self.ttl_s)
        except Exception as exc:
            self._failed("write", exc)
            return
        self._succeeded("write")

    async def drain(self) -> None:
        """Waits for the writes in flight, each bounded by the timeout."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        # Writes first: a task still pending when the loop closes is destroyed with a warning.
        await self.drain()
        await self._client.aclose()


class CountingCache:
    """Counts hits and misses into the metrics: an entry the lookup throws away is a miss."""

    def __init__(self, inner: ResultCache, metrics: Metrics | None) -> None:
        self.inner = inner
        self.metrics = metrics

    async def get(
        self, key: str, specs: Sequence[TensorSpec], items: int
    ) -> list[np.ndarray] | None:
        outputs = await self.inner.get(key, specs, items)
        if self.metrics is not None:
            self.metrics.cache_requests.labels("hit" if outputs is not None else "miss").inc()
        return outputs

    async def put(self, key: str, outputs: list[np.ndarray]) -> None:
        await self.inner.put(key, outputs)

    async def close(self) -> None:
        await self.inner.close()
