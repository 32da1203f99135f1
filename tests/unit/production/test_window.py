"""MovingWindow: the in-process counter behind RateLimiter's memory storage."""

from __future__ import annotations

import time

import pytest

from app.production.window import MovingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 5_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "time", c)
    return c


def test_hits_fill_the_window_and_the_oldest_leaves_it_first(clock: Clock) -> None:
    window = MovingWindow()
    first = window.hit("k", 2, 10)
    assert (first.allowed, first.remaining, first.reset_time) == (True, 1, clock.now + 10)
    clock.now += 4
    assert window.hit("k", 2, 10).allowed
    clock.now += 1
    refused = window.hit("k", 2, 10)
    assert (refused.allowed, refused.remaining, refused.reset_time) == (False, 0, clock.now + 5)
    clock.now += 5  # the first hit is exactly 10 s old: out of the window
    assert window.hit("k", 2, 10).allowed
    assert not window.hit("k", 2, 10).allowed


def test_stats_do_not_count_and_each_limit_counts_apart(clock: Clock) -> None:
    window = MovingWindow()
    assert window.stats("k", 3, 60).remaining == 3
    window.hit("k", 3, 60)
    window.hit("k", 5, 60)
    assert window.stats("k", 3, 60).remaining == 2
    assert window.stats("k", 5, 60).remaining == 4
    assert window.stats("other", 3, 60) == window.stats("other", 3, 60)
    window.clear("k", 3, 60)
    assert window.stats("k", 3, 60).remaining == 3
    assert window.stats("k", 5, 60).remaining == 4


def test_idle_keys_are_swept_so_memory_follows_the_active_keys(clock: Clock) -> None:
    window = MovingWindow(sweep_every_s=30)
    for i in range(1000):
        window.hit(f"client-{i}", 10, 60)
    assert len(window) == 1000
    clock.now += 61  # all idle for longer than their window
    window.hit("new", 10, 60)
    assert len(window) == 1
