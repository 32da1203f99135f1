"""Fixtures for the production building blocks' integration tests: Redis and OTLP receivers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import otlp
from tests.support.redis import redis_server as redis_server


@pytest.fixture
def otlp_grpc_receiver() -> Iterator[otlp.SpanSink]:
    """An OTLP/gRPC trace receiver on 127.0.0.1."""
    with otlp.otlp_grpc_receiver() as sink:
        yield sink


@pytest.fixture
def otlp_http_receiver() -> Iterator[otlp.SpanSink]:
    """An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1; its endpoint has no path."""
    with otlp.otlp_http_receiver() as sink:
        yield sink
