"""Server spans carry the URL without its query string (a client may put a key there), while the
app still gets the query as it was sent; and a request TraceSampling traces gets its span, whatever
its Host header or path."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import Message, Receive, Scope, Send

from app.telemetry import tracing

QUERY = b"api_key=fw_0123456789abcdef_s3cr3t&x=1"


def http_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v2/models/cnn-digits",
        "raw_path": b"/v2/models/cnn-digits",
        "query_string": QUERY,
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
    }


def run_traced(
    monkeypatch: pytest.MonkeyPatch,
    scope: dict[str, Any],
    mode: _StabilityMode = _StabilityMode.DEFAULT,
) -> tuple[list[Any], list[bytes]]:
    """Send `scope` through TraceSampling at ratio 1: the spans exported, and the query strings
    the app was given."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "current_provider", lambda: provider)
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["query_string"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    sampling = tracing.TraceSampling(app, ratio=1.0, excluded=tracing.TRACE_EXCLUDED_PATHS)
    sampling.traced._sem_conv_opt_in_mode = mode  # read from the environment once a process
    asyncio.run(sampling(scope, receive, send))
    spans = list(exporter.get_finished_spans())
    provider.shutdown()
    return spans, seen


@pytest.mark.parametrize(
    ("path", "host"),
    [("/v2/models/cnn-digits", b"127.0.0.1/readyz"), ("/v2/models/readyz", b"testserver")],
)
def test_a_traced_request_gets_its_span_whatever_its_host_or_model_name(
    monkeypatch: pytest.MonkeyPatch, path: str, host: bytes
) -> None:
    """OpenTelemetry's own exclusions (regexes searched over scheme://Host/path) dropped the span
    of a request TraceSampling had traced: a sampled caller's trace was lost."""
    scope = {**http_scope(), "path": path, "raw_path": path.encode(), "headers": [(b"host", host)]}
    spans, _ = run_traced(monkeypatch, scope)
    assert len(spans) == 1


def test_probes_are_not_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    scope = {**http_scope(), "path": "/readyz", "raw_path": b"/readyz"}
    spans, _ = run_traced(monkeypatch, scope)
    assert spans == []


# The attributes the instrumentation sets follow OTEL_SEMCONV_STABILITY_OPT_IN: the old
# `http.url`/`http.target` by default, both those and the new `url.*` with `http/dup`.
@pytest.mark.parametrize("mode", [_StabilityMode.DEFAULT, _StabilityMode.HTTP_DUP])
def test_spans_carry_no_query_string_and_the_app_still_gets_it(
    monkeypatch: pytest.MonkeyPatch, mode: _StabilityMode
) -> None:
    spans, seen = run_traced(monkeypatch, http_scope(), mode)

    assert seen == [QUERY]
    (span,) = spans
    attributes = dict(span.attributes or {})
    assert not any("s3cr3t" in str(value) for value in attributes.values()), attributes
    if mode is _StabilityMode.DEFAULT:
        assert attributes["http.url"] == "http://testserver/v2/models/cnn-digits"
        assert attributes["http.target"] == "/v2/models/cnn-digits"
    else:
        assert attributes["url.path"] == "/v2/models/cnn-digits"
        assert attributes["url.query"] == "REDACTED"
