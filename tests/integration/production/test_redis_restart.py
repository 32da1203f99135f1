"""Every Redis client of the server across a Redis restart: the keys, the rate limits and the
result cache each serve their next burst without a failure. Their pooled connections are all
stale after a restart; built from a URL, redis-py retried nothing, so each failed one request
(a 503 for keys, a 429 or a free pass for limits, a miss for the cache) at the next burst,
however long after Redis was back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from app.inference.cache import RedisCache
from app.production import RateLimiter, RedisKeyStore
from models.manifest import TensorSpec
from tests.support.redis import run_redis_server

BURST = 10


def across_a_restart(
    tmp_path: Path,
    make: Callable[[str], Any],
    call: Callable[[Any], Awaitable[Any]],
    close: Callable[[Any], Coroutine[Any, Any, None]],
) -> list[Any]:
    """Warm a client's pool with a burst, restart Redis on the same port, burst again."""

    async def burst(client: Any) -> list[Any]:
        return await asyncio.gather(*(call(client) for _ in range(BURST)), return_exceptions=True)

    with run_redis_server(tmp_path / "before") as first:
        client = make(first.url)
        runner = asyncio.Runner()
        before = runner.run(burst(client))
        assert not any(isinstance(result, BaseException) for result in before), before
    try:
        with run_redis_server(tmp_path / "after", port=first.port):
            return runner.run(burst(client))
    finally:
        runner.run(close(client))
        runner.close()


def test_the_key_store_serves_a_burst_after_a_redis_restart(tmp_path: Path) -> None:
    results = across_a_restart(
        tmp_path, RedisKeyStore, lambda store: store.aget("0" * 16), RedisKeyStore.aclose
    )
    assert results == [None] * BURST  # no such key: looked up, not failed


def test_the_rate_limiter_serves_a_burst_after_a_redis_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def limiter(url: str) -> RateLimiter:
        return RateLimiter(1000, 60, storage_uri=url, timeout_s=1.0, fail_open=False)

    with caplog.at_level(logging.WARNING):
        decisions = across_a_restart(
            tmp_path, limiter, lambda limiter: limiter.hit("key"), RateLimiter.aclose
        )
    assert [(d.allowed, d.degraded) for d in decisions] == [(True, False)] * BURST
    assert "failing closed" not in caplog.text


def test_the_result_cache_serves_a_burst_after_a_redis_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outputs = [np.arange(4, dtype=np.float32)]
    specs = (TensorSpec(name="y", shape=(-1,)),)  # four items of one value each

    async def put_then_get(cache: RedisCache) -> list[np.ndarray] | None:
        await cache.put("k", outputs)
        await cache.drain()  # the write runs in the background
        return await cache.get("k", specs, 4)

    def cache(url: str) -> RedisCache:
        return RedisCache(url, ttl_s=60, timeout_s=1.0)

    with caplog.at_level(logging.WARNING):
        results = across_a_restart(tmp_path, cache, put_then_get, RedisCache.close)
    assert all(got is not None and np.array_equal(got[0], outputs[0]) for got in results)
    assert "result cache" not in caplog.text


def test_the_key_store_lookup_keeps_one_bound_with_the_retry() -> None:
    """A Redis behind a proxy that accepts, then closes a while later (the Redis behind it
    down): the retry on a closed connection made a lookup wait twice its timeout."""
    stop = threading.Event()

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.1)

        def accept_then_close() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    connection, _ = server.accept()
                    threading.Timer(0.8, connection.close).start()

        acceptor = threading.Thread(target=accept_then_close)
        acceptor.start()
        store = RedisKeyStore(f"redis://127.0.0.1:{server.getsockname()[1]}/0", timeout_s=1.0)

        async def lookup() -> float:
            started = time.monotonic()
            with pytest.raises((TimeoutError, redis.RedisError)):
                await store.aget("0" * 16)
            elapsed = time.monotonic() - started
            await store.aclose()
            return elapsed

        try:
            elapsed = asyncio.run(lookup())
        finally:
            stop.set()
            acceptor.join()
    assert elapsed < 1.4  # one timeout, not two closes of 0.8 s each
