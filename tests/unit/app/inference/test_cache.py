from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.config import Settings
from app.inference.cache import CountingCache, MemoryCache, RedisCache, _pack, _unpack, cache_key
from app.inference.service import build_cache
from app.telemetry.metrics import Metrics
from models.manifest import ModelManifest, Signature, TensorSpec
from tests.support.redis import RedisServer, redis_server  # noqa: F401  # fixture
from tests.support.slow_link import slow_link

MB = 1024 * 1024
SIGNATURE = Signature(
    inputs=(TensorSpec(name="x", shape=(-1, 2)),), outputs=(TensorSpec(name="y", shape=(-1, 2)),)
)
Y = SIGNATURE.outputs  # one float32 output of two values an item
ROW = np.array([[1.5, 2.5]], dtype=np.float32)  # the answer to one item


def manifest(version: str) -> ModelManifest:
    return ModelManifest(
        name="m",
        version=version,
        format="safetensors",
        family="mlp",
        artefact="model.safetensors",
        sha256="0" * 64,
        size_bytes=1,
        signature=SIGNATURE,
        deterministic=True,
    )


def test_the_key_changes_with_the_version_the_input_its_dtype_its_shape_and_the_parameters() -> (
    None
):
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    base = cache_key(manifest("1.0.0"), [x], {})
    assert base == cache_key(manifest("1.0.0"), [x.copy()], {})
    assert base != cache_key(manifest("1.0.1"), [x], {})
    assert base != cache_key(manifest("1.0.0"), [x + 1], {})
    assert base != cache_key(manifest("1.0.0"), [x.astype(np.float64)], {})
    assert base != cache_key(manifest("1.0.0"), [x.reshape(1, 4)], {})
    assert base != cache_key(manifest("1.0.0"), [x], {"seed": 1})


def test_two_registries_versions_of_the_same_name_and_version_never_share_a_key() -> None:
    """A Redis cache shared by servers of two registries answered one's `m 1.0.0` with the
    other's results: the key named the version by its name and number alone."""
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    ours = manifest("1.0.0")
    base = cache_key(ours, [x], {})
    assert base != cache_key(ours.model_copy(update={"sha256": "1" * 64}), [x], {})
    logits = ours.model_copy(update={"family_config": {"softmax": False}})
    assert base != cache_key(logits, [x], {})
    # Who registered it, when and with which notes decide nothing about the outputs.
    notes = {"created_by": "someone else", "description": "the same weights"}
    assert base == cache_key(ours.model_copy(update=notes), [x], {})


def test_outputs_survive_packing_with_their_dtypes_and_shapes() -> None:
    outputs: list[np.ndarray] = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([[1], [2]], dtype=np.int64),
    ]
    restored = _unpack(_pack(outputs))
    for before, after in zip(outputs, restored, strict=True):
        assert before.dtype == after.dtype
        np.testing.assert_array_equal(before, after)


def test_the_memory_cache_evicts_the_least_recently_used_entry() -> None:
    async def main() -> list[bool]:
        cache = MemoryCache(max_entries=2, max_bytes=MB)
        one = [np.zeros(1)]
        await cache.put("a", one)
        await cache.put("b", one)
        await cache.get("a", Y, 1)  # "a" is now the most recently used
        await cache.put("c", one)
        return [await cache.get(k, Y, 1) is not None for k in ("a", "b", "c")]

    assert asyncio.run(main()) == [True, False, True]


def test_the_memory_cache_keeps_a_read_only_copy_of_a_request_s_rows_not_its_batch() -> None:
    batch = np.arange(320, dtype=np.float32).reshape(32, 10)  # a whole batch's outputs
    cache = MemoryCache(max_entries=4, max_bytes=MB)

    async def main() -> list[np.ndarray] | None:
        await cache.put("k", [batch[3:4]])  # one request's rows: a view of the batch
        return await cache.get("k", Y, 1)

    kept = asyncio.run(main())
    assert kept is not None
    assert kept[0].base is None and kept[0].nbytes == 40  # the batch is not pinned
    np.testing.assert_array_equal(kept[0], batch[3:4])
    with pytest.raises(ValueError, match="read-only"):
        kept[0][0, 0] = -1.0


def test_the_redis_cache_round_trips_and_expires_nothing_early(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=1.0)
        try:
            await cache.put("k", [ROW])
            await cache.drain()  # the write runs in the background
            return await cache.get("k", Y, 1), await cache.get("missing", Y, 1)
        finally:
            await cache.close()

    hit, miss = asyncio.run(main())
    assert hit is not None and miss is None
    np.testing.assert_array_equal(hit[0], ROW)


def test_an_unreachable_redis_is_a_miss_not_an_error_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, refused_port: int
) -> None:
    """Said at debug level only, so an outage was invisible: every lookup a plain miss."""

    async def main() -> list[list[np.ndarray] | None]:
        cache = RedisCache(f"redis://127.0.0.1:{refused_port}/0", ttl_s=60, timeout_s=0.2)
        try:
            await cache.put("k", [ROW])  # must not raise
            return [await cache.get("k", Y, 1) for _ in range(3)]
        finally:
            await cache.close()

    with caplog.at_level("INFO", logger="frameworm.cache"):
        assert asyncio.run(main()) == [None, None, None]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "serving without it" in warnings[0].getMessage()


@pytest.mark.parametrize("entries", [1, 3])
def test_the_memory_cache_never_holds_more_than_its_bound(entries: int) -> None:
    async def main() -> int:
        cache = MemoryCache(max_entries=entries, max_bytes=MB)
        for i in range(10):
            await cache.put(str(i), [np.zeros(1)])
        return sum([await cache.get(str(i), Y, 1) is not None for i in range(10)])

    assert asyncio.run(main()) == entries


def test_the_memory_cache_never_holds_more_bytes_than_its_bound() -> None:
    async def main() -> tuple[list[bool], int]:
        cache = MemoryCache(max_entries=100, max_bytes=2500)
        for key in "abc":
            await cache.put(key, [np.zeros(100)])  # 800 bytes each
        await cache.get("a", Y, 1)  # "b" is now the least recently used
        await cache.put("d", [np.zeros(100)])
        await cache.put("huge", [np.zeros(1000)])  # 8,000 bytes: never kept
        kept = [await cache.get(k, Y, 1) is not None for k in ("a", "b", "c", "d", "huge")]
        return kept, cache.nbytes

    assert asyncio.run(main()) == ([True, False, True, True, False], 2400)


def test_storing_a_key_again_replaces_its_bytes() -> None:
    async def main() -> int:
        cache = MemoryCache(max_entries=10, max_bytes=MB)
        await cache.put("k", [np.zeros(100)])
        await cache.put("k", [np.zeros(10)])
        return cache.nbytes

    assert asyncio.run(main()) == 80


def packed(header: str, data: bytes = b"") -> bytes:
    return len(header).to_bytes(4, "big") + header.encode() + data


@pytest.mark.parametrize(
    "blob",
    [
        packed("[[1]x"),  # not JSON
        packed('[["<f4", [-3]]]', bytes(64)),  # a negative dimension
        packed('[["<U2", [1]]]', bytes(8)),  # not a numeric dtype
        packed('[["<f4", [1000000000000000000]]]'),  # more than the blob holds
        packed('[["<f4", [1]]]', bytes(6)),  # bytes left over
    ],
    ids=["not-json", "negative", "text", "too-large", "left-over"],
)
def test_an_unreadable_redis_entry_is_a_miss_not_an_error(
    redis_server: RedisServer,  # noqa: F811
    blob: bytes,
) -> None:
    async def main() -> list[np.ndarray] | None:
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=1.0)
        try:
            await cache._client.set("frameworm:result:k", blob)
            return await cache.get("k", Y, 1)
        finally:
            await cache.close()

    assert asyncio.run(main()) is None


def test_writes_that_always_fail_beside_reads_that_work_are_one_warning(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A TTL Redis refuses (or a full Redis with noeviction) fails every write while reads
    work: each read ended the outage, so each request's write warned again."""
    monkeypatch.setattr(RedisCache, "RETRY_S", 0.0)  # every write tries: none backs off

    async def main() -> None:
        cache = RedisCache(redis_server.url, ttl_s=10**16, timeout_s=1.0)  # past Redis's bound
        try:
            for _ in range(4):
                assert await cache.get("k", Y, 1) is None
                await cache.put("k", [ROW])
                await cache.drain()
            cache.ttl_s = 60  # writes work again: one line says so
            await cache.put("k", [ROW])
            await cache.drain()
            assert await cache.get("k", Y, 1) is not None
        finally:
            await cache.close()

    with caplog.at_level("INFO", logger="frameworm.cache"):
        asyncio.run(main())
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        ("WARNING", "result cache write failed (ResponseError): serving without it"),
        ("INFO", "result cache reachable again"),
    ]


def test_a_write_failure_left_marked_does_not_hide_a_later_outage_of_reads(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes happen only on misses: one failed write stayed marked through hits, and when
    Redis then went down, the reads' failures were logged at debug level only."""
    monkeypatch.setattr(RedisCache, "SAME_OUTAGE_S", 0.0)  # the hits took longer than this

    class Flaky:
        def __init__(self) -> None:
            self.reads_fail = False

        async def get(self, key: str) -> bytes | None:
            if self.reads_fail:
                raise ConnectionError("down")
            return None

        async def set(self, *args: Any, **kwargs: Any) -> None:
            raise TimeoutError

    async def main() -> None:
        cache = RedisCache("redis://127.0.0.1:1/0", ttl_s=60)
        client = cache._client = Flaky()  # type: ignore[assignment]
        assert await cache.get("k", Y, 1) is None
        await cache.put("k", [ROW])  # one write fails
        await cache.drain()
        for _ in range(3):
            assert await cache.get("k", Y, 1) is None  # reads work
        client.reads_fail = True
        assert await cache.get("k", Y, 1) is None

    with caplog.at_level("INFO", logger="frameworm.cache"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "result cache write failed (TimeoutError): serving without it",
        "result cache read failed (ConnectionError): serving without it",
    ]


def test_a_burst_beyond_the_pool_waits_for_a_connection_and_hits(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The default async pool raised MaxConnectionsError past 100 connections: the rest of a
    burst were misses (each running the model) and a logged outage while Redis was fine."""
    burst = 300  # concurrent lookups, past the pool's 100 connections

    async def main() -> list[list[np.ndarray] | None]:
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=10)  # a loaded machine is slow
        try:
            await cache.put("k", [ROW])
            await cache.drain()
            return await asyncio.gather(*(cache.get("k", Y, 1) for _ in range(burst)))
        finally:
            await cache.close()

    with caplog.at_level("DEBUG", logger="frameworm.cache"):
        results = asyncio.run(main())
    assert sum(r is not None for r in results) == burst
    assert caplog.records == []


# Readable entries that are not an answer to one item of Y (one float32 output of shape [1, 2]).
MISFITS: dict[str, list[np.ndarray]] = {
    "no-outputs": [],
    "two-outputs": [ROW, ROW],
    "three-by-seven": [np.zeros((3, 7), dtype=np.float32)],
    "two-items": [np.zeros((2, 2), dtype=np.float32)],
    "zero-d": [np.array(1.0, dtype=np.float32)],
    "bool": [np.ones((1, 2), dtype=np.bool_)],
    "int64": [np.ones((1, 2), dtype=np.int64)],
    "float64": [np.ones((1, 2), dtype=np.float64)],
    "big-endian": [np.ones((1, 2), dtype=">f4")],
}


def looked_up(
    url: str, entries: list[list[np.ndarray]], metrics: Metrics | None = None
) -> list[list[np.ndarray] | None]:
    """Each entry stored under "k" by another writer, then looked up twice for one item of Y."""

    async def main() -> list[list[np.ndarray] | None]:
        redis_cache = RedisCache(url, ttl_s=60, timeout_s=1.0)
        cache = CountingCache(redis_cache, metrics)
        try:
            found = []
            for outputs in entries:
                await redis_cache._client.set("frameworm:result:k", _pack(outputs))
                found += [await cache.get("k", Y, 1), await cache.get("k", Y, 1)]
            return found
        finally:
            await cache.close()

    return asyncio.run(main())


@pytest.mark.parametrize("outputs", MISFITS.values(), ids=MISFITS.keys())
def test_an_entry_that_does_not_fit_the_request_is_a_miss(
    redis_server: RedisServer,  # noqa: F811
    outputs: list[np.ndarray],
) -> None:
    """A [3, 7] array was served for one item, bool and int64 as false and 0 for a float32
    output; a big-endian or 0-d array was a 500. Only the number of outputs was checked."""
    assert looked_up(redis_server.url, [outputs]) == [None, None]


def test_an_entry_that_fits_is_a_hit(redis_server: RedisServer) -> None:  # noqa: F811
    found = looked_up(redis_server.url, [[ROW]])
    assert all(hit is not None and np.array_equal(hit[0], ROW) for hit in found)


def test_entries_that_do_not_fit_are_logged_once_per_kind_and_counted_as_misses(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hit counter counted entries the request then threw away, running the model."""
    registry = CollectorRegistry()
    with caplog.at_level("DEBUG", logger="frameworm.cache"):
        looked_up(redis_server.url, [*MISFITS.values(), [ROW]], Metrics("m", registry))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [message.split(" ", 4)[-1] for message in warned] == [
        "has the wrong number of outputs: a miss (said once)",
        "has an output of the wrong shape: a miss (said once)",
        "has an output of the wrong dtype: a miss (said once)",
    ]
    counted = {
        result: registry.get_sample_value(
            "frameworm_result_cache_requests_total", {"result": result}
        )
        for result in ("hit", "miss")
    }
    assert counted == {"hit": 2, "miss": 2 * len(MISFITS)}


def test_the_lookup_bound_is_a_setting_long_enough_for_a_distant_redis(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """40 ms a round trip: a new connection's client info and its GET take 80 ms, past the
    fixed 50 ms, and a lookup cut off drops its connection: every lookup missed, for good."""
    default = build_cache(Settings(result_cache="redis", redis_url=redis_server.url), None)
    assert isinstance(default, CountingCache) and isinstance(default.inner, RedisCache)
    assert default.inner.timeout_s == 0.05
    asyncio.run(default.inner.close())

    async def main() -> list[list[np.ndarray] | None]:
        writer = RedisCache(redis_server.url, ttl_s=60, timeout_s=1.0)
        await writer.put("k", [ROW])
        await writer.close()  # after the write
        with slow_link(redis_server.port) as link:
            link.delay_s = 0.04
            settings = Settings(
                result_cache="redis",
                redis_url=f"redis://127.0.0.1:{link.port}",
                result_cache_timeout_ms=1000,
            )
            cache = build_cache(settings, None)
            assert cache is not None
            found = [await cache.get("k", Y, 1) for _ in range(3)]
            await cache.close()
        return found

    assert all(found is not None for found in asyncio.run(main()))
