"""The Redis result cache while its Redis hangs (SIGSTOP): what a request waits, and after.

Each lookup and each write waited out its timeout for as long as Redis hung, and requests awaited
both: about 100 ms more a request with the default 50 ms timeout, the whole outage long."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable

import numpy as np
import pytest

from app.inference.cache import RedisCache
from models.manifest import TensorSpec
from tests.support.redis import RedisServer, hung, redis_server  # noqa: F401  # fixture

Y = (TensorSpec(name="y", shape=(-1, 2)),)
ROW = np.array([[1.5, 2.5]], dtype=np.float32)
TIMEOUT_S = 0.2
OUTAGE_S = 2.5  # long enough for two probes


async def waited(call: Awaitable[object]) -> float:
    started = time.monotonic()
    await call
    return time.monotonic() - started


async def stored_and_found(cache: RedisCache, key: str, deadline: float) -> bool:
    """Whether a write of `key` lands and is read back before `deadline`: after an outage
    each skips Redis until its next probe."""
    while time.monotonic() < deadline:
        await cache.put(key, [ROW])
        await cache.drain()
        if await cache.get(key, Y, 1) is not None:
            return True
        await asyncio.sleep(0.05)
    return False


def test_a_hung_redis_costs_lookups_one_timeout_then_a_probe_a_second_and_then_works_again(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[float, list[float], list[float], bool, bool]:
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=TIMEOUT_S)
        try:
            assert await stored_and_found(cache, "before", time.monotonic() + 5)
            with hung(redis_server):
                first = await waited(cache.get("before", Y, 1))
                lookups, writes = [], []
                deadline = time.monotonic() + OUTAGE_S
                while time.monotonic() < deadline:  # a request every 10 ms, each a miss
                    lookups.append(await waited(cache.get("during", Y, 1)))
                    writes.append(await waited(cache.put("during", [ROW])))
                    await asyncio.sleep(0.01)
            deadline = time.monotonic() + 5
            while await cache.get("before", Y, 1) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            read_again = time.monotonic() < deadline
            return (
                first,
                lookups,
                writes,
                read_again,
                await stored_and_found(cache, "after", deadline),
            )
        finally:
            await cache.close()

    with caplog.at_level("INFO", logger="frameworm.cache"):
        first, lookups, writes, read_again, written_again = asyncio.run(main())
    assert first >= TIMEOUT_S  # the first failure waits its timeout...
    # ...the lookups after it return at once, but for a probe about once a second.
    assert statistics.median(lookups) < 0.005
    probes = [wait for wait in lookups if wait > TIMEOUT_S / 2]
    assert 1 <= len(probes) <= 3 and sum(lookups) < 4 * TIMEOUT_S
    assert max(writes) < 0.05  # no request waits for its write
    assert read_again and written_again
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said
    assert said[0][1].endswith("serving without it")


def test_writes_in_flight_are_bounded_and_close_waits_for_them(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """Each write is a task: referenced so it is not collected mid-write, at most half the
    pool at once, and none left pending (destroyed with a warning) when the cache closes."""

    async def main() -> tuple[float, int, list[asyncio.Task[object]]]:
        cache = RedisCache(redis_server.url, ttl_s=60, timeout_s=TIMEOUT_S, max_connections=8)
        with hung(redis_server):
            queued = await waited(asyncio.gather(*(cache.put(str(i), [ROW]) for i in range(50))))
            in_flight = len(cache._writes)
            await cache.close()
        return (
            queued,
            in_flight,
            [t for t in asyncio.all_tasks() if t is not asyncio.current_task()],
        )

    queued, in_flight, left = asyncio.run(main())
    assert queued < 0.1
    assert in_flight == 4
    assert left == []
