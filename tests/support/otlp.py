"""In-process OTLP trace receivers (gRPC and HTTP/protobuf) that keep every span whole.

`otlp_grpc_receiver()` and `otlp_http_receiver()` are context managers yielding a `SpanSink`:
its `endpoint` goes to the exporter, `wait_for(...)` blocks (bounded) until the spans a test
expects are in. Spans keep their ids, parent, kind, attributes and links, so tests can check
the shape of a trace, not only span names.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc  # type: ignore[import-untyped]
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

SPAN_WAIT_S = 10.0


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    links: tuple[tuple[str, str], ...]


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _exported(service: str, span: Span) -> ExportedSpan:
    return ExportedSpan(
        service=service,
        name=span.name,
        kind=span.kind,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        attributes={a.key: _value(a.value) for a in span.attributes},
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
    )


@dataclass
class SpanSink:
    """Every span an OTLP receiver got, whole, and a condition to wait on."""

    endpoint: str = ""
    spans: list[ExportedSpan] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.changed:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(_exported(service, s) for s in scope_spans.spans)
            self.changed.notify_all()

    def wait_for(
        self, done: Callable[[list[ExportedSpan]], bool], timeout_s: float = SPAN_WAIT_S
    ) -> list[ExportedSpan]:
        """All spans so far, once `done` holds for them; fails after the bound."""
        with self.changed:
            if not self.changed.wait_for(lambda: done(self.spans), timeout_s):
                names = [(s.name, s.trace_id) for s in self.spans]
                pytest.fail(f"the spans expected did not arrive within {timeout_s}s: {names}")
            return list(self.spans)


@contextmanager
def otlp_grpc_receiver() -> Iterator[SpanSink]:
    sink = SpanSink()

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(
            self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            sink.record(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)  # type: ignore[no-untyped-call]
    sink.endpoint = f"http://127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        yield sink
    finally:
        server.stop(grace=None).wait(5)


@contextmanager
def otlp_http_receiver() -> Iterator[SpanSink]:
    sink = SpanSink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            sink.record(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if self.path == "/v1/traces" else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sink.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
