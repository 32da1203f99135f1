"""RateLimiter: moving window on memory storage, and failing storages."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.production import RateLimitDecision, RateLimiter, parse_limit
from tests.unit.production.conftest import FakeClock


def test_allow_admits_max_requests_then_refuses() -> None:
    limiter = RateLimiter(max_requests=3, window_seconds=60)
    assert [limiter.allow("u") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("someone-else") is True


def test_get_remaining_counts_down_and_reset_restores_the_quota() -> None:
    limiter = RateLimiter(3, 60)
    assert limiter.get_remaining("u") == 3
    limiter.allow("u")
    assert limiter.get_remaining("u") == 2
    limiter.reset("u")
    assert limiter.get_remaining("u") == 3


def test_the_window_moves_instead_of_resetting_at_fixed_boundaries(wall_clock: FakeClock) -> None:
    limiter = RateLimiter(2, 60)
    wall_clock.now = 6_000_050.0  # 50 s into a fixed 60 s window
    assert limiter.allow("u")
    wall_clock.now += 9
    assert limiter.allow("u")
    wall_clock.now += 2  # a fixed window would have reset here
    assert not limiter.allow("u")
    wall_clock.now += 50  # the first hit is now 61 s old: one slot frees
    assert limiter.allow("u")
    assert not limiter.allow("u")


def test_exactly_max_requests_of_many_concurrent_threads_are_allowed() -> None:
    limiter = RateLimiter(50, 60)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: limiter.allow("hot"), range(80)))
    assert sum(results) == 50


def test_exactly_max_requests_of_many_concurrent_async_hits_are_allowed() -> None:
    limiter = RateLimiter(100, 60)

    async def main() -> int:
        decisions = await asyncio.gather(*(limiter.hit("hot") for _ in range(130)))
        return sum(d.allowed for d in decisions)

    assert asyncio.run(main()) == 100


def test_hit_reports_what_the_ratelimit_headers_need(wall_clock: FakeClock) -> None:
    limiter = RateLimiter(2, 60)

    async def main() -> list[tuple[bool, int, int, float, int]]:
        out = []
        for _ in range(3):
            d = await limiter.hit("u")
            out.append((d.allowed, d.limit, d.remaining, d.reset_after_s, d.retry_after_s))
            wall_clock.now += 10
        return out

    first, second, third = asyncio.run(main())
    assert first == (True, 2, 1, 60.0, 60)
    assert second[:3] == (True, 2, 0)
    # Refused 20 s after the first hit: a slot frees 40 s later.
    assert third == (False, 2, 0, 40.0, 40)


def test_a_per_call_limit_overrides_the_default_with_its_own_counter() -> None:
    limiter = RateLimiter(1, 60)

    async def main() -> tuple[list[bool], bool]:
        custom = [(await limiter.hit("k", limit="3/minute")).allowed for _ in range(4)]
        default = (await limiter.hit("k")).allowed
        return custom, default

    custom, default = asyncio.run(main())
    assert custom == [True, True, True, False]
    assert default is True


def test_sync_and_async_calls_share_one_memory_counter() -> None:
    limiter = RateLimiter(2, 60)
    assert limiter.allow("u")
    assert asyncio.run(limiter.hit("u")).allowed
    assert not limiter.allow("u")


def test_from_string_reads_a_limit_string() -> None:
    limiter = RateLimiter.from_string("5/minute")
    assert (limiter.max_requests, limiter.window_seconds) == (5, 60)
    assert parse_limit("10 per second").amount == 10
    with pytest.raises(ValueError):
        parse_limit("lots")


@pytest.mark.parametrize(
    "text",
    [
        "2/second;3/minute",  # `limits` reads both; only the first would have been enforced
        "10/second, 100/minute",
        "0/minute",  # refused every request for good
        "5 per 0 seconds",  # read by `limits` as 5 per second
        "1000/min",
        1000,
    ],
)
def test_a_limit_that_is_not_exactly_one_positive_limit_is_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_limit(text)
    assert parse_limit("10 per 2 minutes").get_expiry() == 120


@pytest.mark.parametrize(
    "text",
    [
        "100000000000000000000/second",  # every Redis hit failed: an outage, fail-open or closed
        "1000000000001/second",
        "1/9300000000000000 seconds",  # its milliseconds overflow Redis's integers
        "1/36501 days",  # and memory storage sent a Retry-After of 8.6e15 s at the far end
        "1/1000 years",
    ],
)
def test_a_limit_past_a_trillion_requests_or_a_hundred_years_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="at most 10\\^12 requests in at most 100 years"):
        parse_limit(text)


def test_the_largest_limits_are_accepted_and_enforced() -> None:
    assert parse_limit("1000000000000/second").amount == 10**12
    assert parse_limit("1/36500 days").get_expiry() == 36_500 * 86_400
    limiter = RateLimiter.from_string("1/100 years")
    assert limiter.allow("k") and not limiter.allow("k")
    with pytest.raises(ValueError, match="max_requests"):
        RateLimiter(10**12 + 1, 1)
    with pytest.raises(ValueError, match="window_seconds"):
        RateLimiter(1, 36_500 * 86_400 + 1)
    with pytest.raises(ValidationError, match="FRAMEWORM_RATE_LIMIT"):
        Settings(_env_file=None, rate_limit="1/1000 years")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_requests": 0, "window_seconds": 1}, "max_requests"),
        ({"max_requests": 1, "window_seconds": 0.5}, "window_seconds"),
        ({"max_requests": 1, "window_seconds": 1, "timeout_s": 0}, "timeout_s"),
        ({"max_requests": 1, "window_seconds": 1, "storage_uri": "mongodb://x"}, "unsupported"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@pytest.mark.parametrize("fail_open", [True, False])
def test_an_unreachable_storage_fails_open_or_closed_and_never_raises(
    fail_open: bool, caplog: pytest.LogCaptureFixture, refused_port: int
) -> None:
    uri = f"redis://127.0.0.1:{refused_port}"
    limiter = RateLimiter(5, 60, storage_uri=uri, fail_open=fail_open, timeout_s=0.5)
    caplog.set_level(logging.DEBUG, logger="app.production.ratelimit")

    async def main() -> list[RateLimitDecision]:
        try:
            return [await limiter.hit("u") for _ in range(3)]
        finally:
            await limiter.aclose()

    decisions = asyncio.run(main())
    assert [d.allowed for d in decisions] == [fail_open] * 3
    # Try again in seconds, not at the end of a window (a minute here, a day for "1/day").
    assert {d.retry_after_s for d in decisions} == {2}
    assert limiter.allow("u") is fail_open
    assert limiter.get_remaining("u") == (5 if fail_open else 0)
    limiter.reset("u")
    limiter.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the state change is logged, not every request


def test_a_storage_that_hangs_is_cut_off_by_the_timeout(silent_server: int) -> None:
    limiter = RateLimiter(5, 60, storage_uri=f"redis://127.0.0.1:{silent_server}", timeout_s=0.1)

    async def main() -> tuple[bool, bool, float]:
        started = time.monotonic()
        decision = await limiter.hit("u")
        elapsed = time.monotonic() - started
        await limiter.aclose()
        return decision.allowed, decision.degraded, elapsed

    allowed, degraded, elapsed = asyncio.run(main())
    assert allowed and degraded
    assert elapsed < 2
    started = time.monotonic()
    assert limiter.allow("u")
    assert time.monotonic() - started < 2
    limiter.close()
