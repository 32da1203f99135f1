"""MovingWindow: the in-process counter behind RateLimiter's memory storage."""

from __future__ import annotations

from app.production.window import MovingWindow
from tests.unit.production.conftest import FakeClock


def test_hits_fill_the_window_and_the_oldest_leaves_it_first(wall_clock: FakeClock) -> None:
    window = MovingWindow()
    first = window.hit("k", 2, 10)
    assert (first.allowed, first.remaining, first.reset_time) == (True, 1, wall_clock.now + 10)
    wall_clock.now += 4
    assert window.hit("k", 2, 10).allowed
    wall_clock.now += 1
    refused = window.hit("k", 2, 10)
    assert (refused.allowed, refused.remaining, refused.reset_time) == (
        False,
        0,
        wall_clock.now + 5,
    )
    wall_clock.now += 5  # the first hit is exactly 10 s old: out of the window
    assert window.hit("k", 2, 10).allowed
    assert not window.hit("k", 2, 10).allowed


def test_stats_do_not_count_and_each_limit_counts_apart(wall_clock: FakeClock) -> None:
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


def test_idle_keys_are_swept_so_memory_follows_the_active_keys(wall_clock: FakeClock) -> None:
    window = MovingWindow(sweep_every_s=30)
    for i in range(1000):
        window.hit(f"client-{i}", 10, 60)
    assert len(window) == 1000
    wall_clock.now += 61  # all idle for longer than their window
    window.hit("new", 10, 60)
    assert len(window) == 1
