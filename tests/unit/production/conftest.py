"""Fixtures shared by the production building blocks' unit tests."""

from __future__ import annotations

import time

import pytest


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """time.time under test control (the rate limiters read it, `limits` included)."""
    clock = FakeClock()
    monkeypatch.setattr(time, "time", clock)
    return clock
