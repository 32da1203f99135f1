"""TokenBucketLimiter."""

from __future__ import annotations

import math
import threading

import pytest

from app.production import TokenBucketLimiter


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_bucket_spends_tokens_and_refills_over_time() -> None:
    clock = FakeClock()
    bucket = TokenBucketLimiter(capacity=10, refill_rate=2, clock=clock)
    assert bucket.allow("u", tokens=8)
    assert not bucket.allow("u", tokens=3)
    clock.now += 0.5  # one token back
    assert bucket.allow("u", tokens=3)
    assert bucket.available("u") == pytest.approx(0)
    clock.now += 100
    assert bucket.available("u") == 10  # never above capacity
    assert not bucket.allow("u", tokens=11)


def test_wait_s_is_the_time_until_the_tokens_are_there() -> None:
    """A Retry-After: two failures an hour are spent, the next is allowed in 30 minutes."""
    clock = FakeClock()
    bucket = TokenBucketLimiter(capacity=2, refill_rate=2 / 3600, clock=clock)
    assert bucket.wait_s("u") == 0
    assert bucket.allow("u") and bucket.allow("u") and not bucket.allow("u")
    assert bucket.wait_s("u") == pytest.approx(1800)
    clock.now += 1799
    assert not bucket.allow("u")
    clock.now += 1
    assert bucket.allow("u")


def test_token_bucket_drops_keys_that_have_been_idle_long_enough_to_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucketLimiter(capacity=4, refill_rate=1, clock=clock)
    for i in range(1000):
        bucket.allow(f"client-{i}")
    assert len(bucket) == 1000
    clock.now += 4  # every bucket is full again
    bucket.allow("late")
    assert len(bucket) == 1


def test_token_bucket_never_holds_more_than_max_keys() -> None:
    bucket = TokenBucketLimiter(capacity=4, refill_rate=0.001, max_keys=100, clock=FakeClock())
    for i in range(1000):
        bucket.allow(f"client-{i}")
    assert len(bucket) == 100


def test_token_bucket_is_exact_under_concurrent_threads() -> None:
    bucket = TokenBucketLimiter(capacity=50, refill_rate=1e-9)
    barrier = threading.Barrier(8)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        for _ in range(20):
            result = bucket.allow("shared")
            with lock:
                allowed.append(result)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 50


@pytest.mark.parametrize(
    ("capacity", "refill_rate"),
    # NaN passed the `<= 0` checks: a NaN rate allowed every call, a NaN capacity none.
    [(0, 1), (1, 0), (math.nan, 1), (1, math.nan), (math.inf, 1), (1, math.inf)],
)
def test_token_bucket_refuses_bad_settings(capacity: float, refill_rate: float) -> None:
    with pytest.raises(ValueError, match="positive, finite"):
        TokenBucketLimiter(capacity=capacity, refill_rate=refill_rate)


@pytest.mark.parametrize("tokens", [-1.0, math.nan, math.inf])
def test_token_bucket_refuses_bad_token_counts(tokens: float) -> None:
    with pytest.raises(ValueError):
        TokenBucketLimiter(capacity=1, refill_rate=1).allow("u", tokens=tokens)


def test_more_tokens_than_the_bucket_holds_never_pass_and_say_so() -> None:
    bucket = TokenBucketLimiter(capacity=2, refill_rate=1)
    assert not bucket.allow("u", tokens=3)
    assert bucket.wait_s("u", tokens=3) == math.inf  # it said 1.0: a retry that never passes


def test_a_stale_clock_reading_neither_takes_tokens_nor_moves_time_back() -> None:
    clock = FakeClock(100.0)
    bucket = TokenBucketLimiter(capacity=10, refill_rate=1, clock=clock)
    assert bucket.allow("k")
    clock.now = 99.0  # older than the bucket's last update, as a racing thread's read was
    assert bucket.available("k") == 9  # a negative elapsed time would have taken one away
    assert bucket.allow("k", tokens=9)
    clock.now = 100.0
    # The update is still as of 100: the second between 99 and 100 does not refill again.
    assert bucket.available("k") == 0


def test_the_clock_is_read_while_holding_the_lock() -> None:
    held: list[bool] = []

    def clock() -> float:
        held.append(bucket._lock.locked())
        return 1_000.0

    bucket = TokenBucketLimiter(capacity=2, refill_rate=1, clock=clock)
    bucket.allow("k")
    bucket.available("k")
    assert held == [True, True]
