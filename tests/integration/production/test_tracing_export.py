"""Spans reach a real OTLP receiver over gRPC and over HTTP."""

from __future__ import annotations

import pytest

from app.production import setup_tracing, shutdown_tracing
from app.production.tracing import Protocol
from tests.support.otlp import SpanSink


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_finished_span_arrives_at_the_collector_with_the_service_name(
    transport: Protocol, request: pytest.FixtureRequest
) -> None:
    receiver: SpanSink = request.getfixturevalue(f"otlp_{transport}_receiver")
    tracer = setup_tracing(
        "frameworm-test",
        receiver.endpoint,
        protocol=transport,
        schedule_delay_s=0.05,
    )
    with tracer.start_as_current_span("infer"):
        pass
    assert shutdown_tracing(10.0)
    spans = receiver.wait_for(lambda spans: bool(spans))
    assert ("frameworm-test", "infer") in [(s.service, s.name) for s in spans]
