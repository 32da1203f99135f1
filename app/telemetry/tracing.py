"""Tracing in the server: the OpenTelemetry ASGI middleware, span names, trace ids for logs.

Off (no endpoint) costs nothing: no middleware, no spans. On: W3C `traceparent` is honoured
on the way in (parent-based sampling continues a sampled caller's trace), `traceresponse` goes
out, probes and /metrics are not traced, spans carry the URL without its query string (a
client may put a key there), and the batcher adds spans for the queue wait and the forward
pass, the latter linked to every request it served.

The sampling decision is taken first, by `TraceSampling`, so an unsampled request (99% of them
at the default ratio) skips the OpenTelemetry middleware altogether: it would otherwise build
a non-recording span, context and wrappers for every request, which costs more than the
hardening layers together. The provider then samples everything it is handed.
"""

from __future__ import annotations

import logging
import random
import re

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.propagators import (
    TraceResponsePropagator,
    set_global_response_propagator,
)
from opentelemetry.propagate import set_global_textmap
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.production.tracing import current_provider, setup_tracing

log = logging.getLogger("frameworm.tracing")

# OpenTelemetry's loggers that warn about a caller's malformed tracestate, quoting it.
CLIENT_HEADER_LOGGERS = ("opentelemetry.trace.span", "opentelemetry.trace.propagation")
TRACE_EXCLUDED_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"}
)


def span_details(scope: Scope) -> tuple[str, dict[str, str]]:
    """A provisional span name: the method. The raw path never names a span (unbounded);
    `name_span_by_route` renames it once routing has found the route template."""
    return str(scope.get("method", "HTTP")), {}


def name_span_by_route(scope: Scope) -> None:
    """Name the current server span `METHOD /route/{template}`, after the app has routed."""
    if not is_traced(scope):
        return
    span = trace.get_current_span()
    route = getattr(scope.get("route"), "path", None)
    if route and span.is_recording():
        span.update_name(f"{scope.get('method', 'HTTP')} {route}")
        span.set_attribute("http.route", route)


# Span attributes the ASGI instrumentation may copy from the raw URL, query included, by
# semantic-conventions version (the old `http.*`, the new `url.*`, or both when
# OTEL_SEMCONV_STABILITY_OPT_IN asks).
_URL_ATTRIBUTES = ("http.url", "http.target", "url.full")


def without_query(span: trace.Span, scope: Scope) -> None:
    """`server_request_hook`: the span's copies of the URL lose the query string.

    A client may put a secret there (`?api_key=...`: the server reads keys from headers only,
    but a misconfigured client sends it anyway), and spans leave the server for the collector.
    Only the span's attributes change: the app still sees the query as it was sent.
    """
    if not scope.get("query_string") or not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(name, value.split("?", 1)[0])
    if "url.query" in attributes:  # an attribute cannot be removed
        span.set_attribute("url.query", "REDACTED")


class TraceSampling:
    """Parent-based ratio sampling in front of the OpenTelemetry middleware.

    A `traceparent` from the caller decides (its sampled flag); without one, a new trace is
    sampled with probability `ratio`. Only sampled requests go through `traced`.
    """

    def __init__(self, app: ASGIApp, *, ratio: float, excluded: frozenset[str]) -> None:
        self.app = app
        self.ratio = ratio
        self.excluded = excluded
        self.traced = OpenTelemetryMiddleware(
            app,
            # Excluded here by exact path (TraceSampling): OpenTelemetry's own list is regexes
            # searched over scheme://Host/path, so a client's Host header or a model named
            # "readyz" dropped a sampled trace after it was marked traced.
            excluded_urls=None,
            default_span_details=span_details,
            server_request_hook=without_query,
            tracer_provider=current_provider(),
            exclude_spans=["receive", "send"],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.excluded and self.sampled(scope):
            scope.setdefault("state", {})[TRACED] = True
            await self.traced(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def sampled(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"traceparent":
                # As OpenTelemetry's propagator reads it, so both judge the header alike: at
                # most 512 characters, spaces around it ignored (httptools keeps trailing ones).
                match = _TRACEPARENT.fullmatch(value.strip(b" \t")) if len(value) <= 512 else None
                # Version 00 has exactly these fields; a later version may append more, and ff
                # is invalid (W3C Trace Context, "Versioning of traceparent").
                if match is not None and match[1] != b"ff" and not (match[1] == b"00" and match[4]):
                    if int(match[3], 16) & 0x01:
                        return True
                    # Not traced here, but the access line names the caller's trace, so its
                    # logs can still be joined with this request's.
                    scope.setdefault("state", {})[CALLER_TRACE_ID] = match[2].decode()
                    return False
                break  # malformed: a new trace, as the W3C spec says
        return random.random() < self.ratio  # noqa: S311  # nosec B311  # sampling, not security


# version-traceid-parentid-flags[-more, after version 00]; the all-zero ids are invalid.
_TRACEPARENT = re.compile(
    rb"([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-([0-9a-f]{2})(-.*)?", re.DOTALL
)
# scope["state"] key: the trace id of a caller whose traceparent was not sampled.
CALLER_TRACE_ID = "caller_trace_id"
# scope["state"] key: set when TraceSampling sends the request through the OpenTelemetry
# middleware. Without it no span of this request exists, so the layers that put trace ids on
# logs and exemplars skip OpenTelemetry's context lookups (five calls each) for 99% of requests.
TRACED = "traced"


def is_traced(scope: Scope) -> bool:
    state = scope.get("state")
    return state is not None and TRACED in state


def tracing_middleware(settings: Settings) -> tuple[trace.Tracer | None, Middleware | None]:
    """The tracer for the batcher's spans and the middleware, or (None, None) when off."""
    if not settings.otlp_endpoint:
        return None, None
    tracer = setup_tracing(
        "frameworm",
        settings.otlp_endpoint,
        protocol=settings.otlp_protocol,
        sample_ratio=1.0,  # TraceSampling has decided by the time a span is started
    )
    set_global_response_propagator(TraceResponsePropagator())  # type: ignore[no-untyped-call]
    # W3C trace context only: baggage is not used here, and its parser logs a warning quoting
    # each malformed member a caller sends (180 lines for one 8 KB header, before any key).
    set_global_textmap(TraceContextTextMapPropagator())
    for name in CLIENT_HEADER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    middleware = Middleware(
        TraceSampling, ratio=settings.trace_sample_ratio, excluded=TRACE_EXCLUDED_PATHS
    )
    log.info(
        "tracing %g of requests that start a trace; a sampled caller's trace always continues",
        settings.trace_sample_ratio,
    )
    return tracer, middleware


def sampled_trace_id() -> str | None:
    """The current trace id as hex when this request is sampled (for exemplars), else None."""
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return format(context.trace_id, "032x")


def current_trace_ids() -> tuple[str | None, str | None]:
    """The current span's trace and span ids as hex, for log lines."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
