"""TraceSampling's decision: the caller's W3C traceparent, else the ratio for a new trace."""

from __future__ import annotations

import pytest
from starlette.types import Receive, Scope, Send

from app.telemetry.tracing import TraceSampling

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("not called")


def sampled(traceparent: str | None, ratio: float) -> bool:
    headers = [] if traceparent is None else [(b"traceparent", traceparent.encode())]
    return TraceSampling(_app, ratio=ratio, excluded=frozenset()).sampled({"headers": headers})


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (f"00-{TRACE}-{PARENT}-01", True),
        (f"00-{TRACE}-{PARENT}-00", False),
        (f"01-{TRACE}-{PARENT}-01", True),  # a later version: its first four fields decide
        (f"cc-{TRACE}-{PARENT}-01-what-comes-later", True),
        (f"cc-{TRACE}-{PARENT}-00-what-comes-later", False),
        # Spaces around it, as OpenTelemetry's propagator allows (httptools keeps trailing
        # ones): judged otherwise here, a sampled caller went untraced.
        (f"00-{TRACE}-{PARENT}-01 ", True),
        (f"\t00-{TRACE}-{PARENT}-00 ", False),
        (f"cc-{TRACE}-{PARENT}-01-{'x' * 400}", True),  # 460 characters: within 512
    ],
)
def test_a_valid_traceparent_decides_whatever_the_ratio(traceparent: str, expected: bool) -> None:
    assert sampled(traceparent, ratio=1.0 - expected) is expected


@pytest.mark.parametrize(
    "traceparent",
    [
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex
        "garbage",
        # Past 512 characters OpenTelemetry ignores it: continuing it here started a new trace
        # there, under the caller's flag.
        f"cc-{TRACE}-{PARENT}-01-{'x' * 500}",
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace_at_the_ratio(traceparent: str) -> None:
    assert sampled(traceparent, ratio=0.0) is False
    assert sampled(traceparent, ratio=1.0) is True


def test_without_a_traceparent_the_ratio_decides() -> None:
    assert sampled(None, ratio=0.0) is False
    assert sampled(None, ratio=1.0) is True
