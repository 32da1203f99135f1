"""RateLimiter and RedisKeyStore against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from app.production import (
    APIKeyAuth,
    AuthFailure,
    KeyRecord,
    Principal,
    RateLimitDecision,
    RateLimiter,
    RedisKeyStore,
)
from tests.support.redis import RedisServer
from tests.support.slow_link import slow_link

PEPPER = "p" * 32


def test_redis_limits_are_exact_under_concurrent_async_hits(redis_server: RedisServer) -> None:
    limiter = RateLimiter(100, 60, storage_uri=redis_server.url, timeout_s=2)

    async def main() -> list[bool]:
        decisions = await asyncio.gather(*(limiter.hit("hot") for _ in range(130)))
        await limiter.aclose()
        assert not any(d.degraded for d in decisions)
        return [d.allowed for d in decisions]

    assert sum(asyncio.run(main())) == 100


def test_redis_limits_are_shared_between_limiters_and_between_sync_and_async(
    redis_server: RedisServer,
) -> None:
    first = RateLimiter(3, 60, storage_uri=redis_server.url, timeout_s=2)
    second = RateLimiter(3, 60, storage_uri=redis_server.url, timeout_s=2)

    async def hit(limiter: RateLimiter) -> RateLimitDecision:
        try:
            return await limiter.hit("u")
        finally:
            await limiter.aclose()

    try:
        assert first.allow("u")
        assert asyncio.run(hit(second)).allowed
        assert second.get_remaining("u") == 1
        decision = asyncio.run(hit(first))
        assert decision.allowed and decision.remaining == 0
        assert not second.allow("u")
        refused = asyncio.run(hit(second))
        assert not refused.allowed and not refused.degraded
        assert 0 < refused.reset_after_s <= 60
        first.reset("u")
        assert second.get_remaining("u") == 3
    finally:
        first.close()
        second.close()


def test_a_per_key_limit_string_applies_on_redis(redis_server: RedisServer) -> None:
    limiter = RateLimiter(1, 60, storage_uri=redis_server.url, timeout_s=2)

    async def main() -> list[bool]:
        try:
            return [(await limiter.hit("k", limit="2/minute")).allowed for _ in range(3)]
        finally:
            await limiter.aclose()

    assert asyncio.run(main()) == [True, True, False]


def test_hits_do_not_block_the_event_loop(redis_server: RedisServer) -> None:
    limiter = RateLimiter(1000, 60, storage_uri=redis_server.url, timeout_s=2)

    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        for _ in range(20):
            await limiter.hit("loop")
        stop.set()
        await task
        await limiter.aclose()
        return ticks

    assert asyncio.run(main()) >= 20  # the loop ran other work during every round trip


def test_redis_key_store_changes_are_visible_to_every_instance_at_once(
    redis_server: RedisServer,
) -> None:
    writer = APIKeyAuth(store=RedisKeyStore(redis_server.url), pepper=PEPPER)
    reader_store = RedisKeyStore(redis_server.url)
    reader = APIKeyAuth(store=reader_store, pepper=PEPPER)
    key = writer.create_key("alice", scopes=("infer",), rate_limit="10/second")
    key_id = key.split("_")[1]

    async def authenticate() -> Principal | AuthFailure:
        try:
            return await reader.authenticate(key)
        finally:
            await reader_store.aclose()

    assert asyncio.run(authenticate()) == Principal(key_id, "alice", ("infer",), "10/second")
    assert reader.verify_key(key, user_id="alice")
    assert [r.id for r in reader.list_keys()] == [key_id]
    assert writer.revoke_key(key, "alice")
    assert writer.revoke_id(key_id)  # revoking twice is still a success
    reader_store = RedisKeyStore(redis_server.url)
    reader = APIKeyAuth(store=reader_store, pepper=PEPPER)
    assert asyncio.run(authenticate()) == AuthFailure("revoked")
    assert not writer.revoke_id("0" * 16)
    reader_store.close()
    assert isinstance(writer.store, RedisKeyStore)
    writer.store.close()


def test_redis_key_store_refuses_a_duplicate_id(redis_server: RedisServer) -> None:
    store = RedisKeyStore(redis_server.url)
    record = KeyRecord("0123456789abcdef", "alice", ("infer",), time.time(), "00")
    store.add(record)
    with pytest.raises(ValueError, match="exists"):
        store.add(record)
    assert store.get("0123456789abcdef") == record
    store.close()


def test_the_first_hit_of_a_fresh_process_is_decided_by_redis_not_by_the_timeout(
    redis_server: RedisServer,
) -> None:
    """The redis client's import (a few hundred ms on a busy machine) counted against the
    first hit's 0.25 s bound, so each process's first request failed closed here."""
    script = (
        "import asyncio, sys\n"
        "from app.production import RateLimiter\n"
        "limiter = RateLimiter(5, 60, storage_uri=sys.argv[1], fail_open=False)\n"
        "decision = asyncio.run(limiter.hit('first'))\n"
        "print(decision.allowed, decision.degraded)\n"
    )
    for _ in range(3):
        done = subprocess.run(  # nosec B603  # this interpreter, fixed code
            [sys.executable, "-c", script, redis_server.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout.split() == ["True", "False"], done.stdout + done.stderr


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_hit_redis_answered_stands_when_the_stats_read_after_it_is_too_slow(
    redis_server: RedisServer, fail_open: bool
) -> None:
    """Redis slow, not down: each command reaches it 1 s late, within the 1.5 s bound for one
    round trip and not for two. The hit's answer stood for nothing: a counted hit was answered
    503 "cannot be checked" failing closed (the client charged for a request it was refused),
    and a refused one was served failing open (past the limit)."""
    with slow_link(redis_server.port) as link:
        uri = f"redis://127.0.0.1:{link.port}"
        # Two limiters, so each slow hit has a warm connection of its own (one whose read was
        # cut off is dropped, and a new one's handshake is slow too).
        counting, refusing = (
            RateLimiter(1, 60, storage_uri=uri, fail_open=fail_open, timeout_s=1.5)
            for _ in range(2)
        )

        async def hits() -> list[RateLimitDecision]:
            try:
                warm = [await counting.hit("other"), await refusing.hit("full")]
                link.delay_s = 1.0
                slow = [await counting.hit("fresh"), await refusing.hit("full")]
                link.delay_s = 0.0
                return [*warm, *slow, await counting.hit("fresh")]
            finally:
                await counting.aclose()
                await refusing.aclose()

        *warm, counted, refused, after = asyncio.run(hits())
    assert all(d.allowed and not d.degraded for d in warm)
    # Counted: served, without RateLimit-* headers (what remains was not read).
    assert counted.allowed and counted.degraded
    # Refused by Redis: a 429 (not degraded), to retry within the window.
    assert not refused.allowed and not refused.degraded and refused.retry_after_s == 60
    assert not after.allowed and not after.degraded  # the slow hit was counted


@pytest.mark.parametrize(
    ("edit", "failure"),
    [
        (lambda record: {**record, "rate_limit": "1000/min"}, "invalid_limit"),
        (lambda record: {"id": record["id"]}, "unknown"),  # no owner, hash...
        (lambda record: 5, "unknown"),
        # JSON's NaN compares false with every time: it never expired.
        (lambda record: {**record, "expires": float("nan")}, "unknown"),
        (lambda record: {**record, "expires": "Infinity"}, "unknown"),
        (lambda record: {**record, "expires": 10**400}, "unknown"),  # OverflowError: a 503
        # Raw JSON nested too deeply for json.loads (RecursionError, which escaped).
        (lambda record: "[" * 100_000 + "]" * 100_000, "unknown"),
    ],
)
def test_a_hand_edited_key_record_the_server_cannot_apply_is_refused_not_an_error(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    edit: Callable[[dict[str, object]], object],
    failure: str,
) -> None:
    import redis

    store = RedisKeyStore(redis_server.url)
    auth = APIKeyAuth(store=store, pepper=PEPPER)
    key = auth.create_key("alice", rate_limit="10/minute")
    client = redis.Redis.from_url(redis_server.url)
    name = store.prefix + key.split("_")[1]
    record = json.loads(client.get(name) or b"")
    edited = edit(record)
    client.set(name, edited if isinstance(edited, str) else json.dumps(edited))

    async def authenticate() -> Principal | AuthFailure:
        try:
            return await auth.authenticate(key)
        finally:
            await store.aclose()

    assert asyncio.run(authenticate()) == AuthFailure(failure)  # type: ignore[arg-type]
    assert any(
        record["id"] in r.getMessage() or "invalid key record" in r.getMessage()
        for r in caplog.records
    )
    client.close()
    store.close()
