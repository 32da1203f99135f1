"""/readyz's `forward` check (app/api/health.py): the batcher's pass against twice the request
timeout. End to end, with a model that loops, in tests/e2e/test_drain.py."""

from __future__ import annotations

import time

import pytest

from app.api.health import forward_check


@pytest.mark.parametrize(
    ("running_s", "ok"),
    [(None, True), (0.0, True), (1.9, True), (2.1, False), (3600.0, False)],
)
def test_ready_until_one_pass_runs_past_twice_the_request_timeout(
    running_s: float | None, ok: bool
) -> None:
    since = None if running_s is None else time.monotonic() - running_s
    check = forward_check(since, request_timeout_ms=1000)
    assert check["ok"] is ok
    if not ok:
        assert check["reason"].startswith("one forward pass has run for ")
