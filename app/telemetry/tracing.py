"""Tracing in the server: the OpenTelemetry ASGI middleware, span names, trace ids for logs.

Off (no endpoint) costs nothing: no middleware, no spans. On: W3C `traceparent` is honoured
on the way in (parent-based sampling continues a sampled caller's trace), `traceresponse` goes
out, probes and /metrics are not traced, and the batcher adds spans for the queue wait and the
forward pass, the latter linked to every request it served.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.propagators import (
    TraceResponsePropagator,
    set_global_response_propagator,
)
from opentelemetry.util.http import parse_excluded_urls
from starlette.middleware import Middleware
from starlette.types import Scope

from app.config import Settings
from app.production.tracing import current_provider, setup_tracing

EXCLUDED_URLS = "/healthz$,/readyz,/metrics$,/v2/health/"


def span_details(scope: Scope) -> tuple[str, dict[str, str]]:
    """A provisional span name: the method. The raw path never names a span (unbounded);
    `name_span_by_route` renames it once routing has found the route template."""
    return str(scope.get("method", "HTTP")), {}


def name_span_by_route(scope: Scope) -> None:
    """Name the current server span `METHOD /route/{template}`, after the app has routed."""
    span = trace.get_current_span()
    route = getattr(scope.get("route"), "path", None)
    if route and span.is_recording():
        span.update_name(f"{scope.get('method', 'HTTP')} {route}")
        span.set_attribute("http.route", route)


def tracing_middleware(settings: Settings) -> tuple[trace.Tracer | None, Middleware | None]:
    """The tracer for the batcher's spans and the middleware, or (None, None) when off."""
    if not settings.otlp_endpoint:
        return None, None
    tracer = setup_tracing(
        "frameworm",
        settings.otlp_endpoint,
        protocol=settings.otlp_protocol,
        sample_ratio=settings.trace_sample_ratio,
    )
    set_global_response_propagator(TraceResponsePropagator())  # type: ignore[no-untyped-call]
    middleware = Middleware(
        OpenTelemetryMiddleware,
        excluded_urls=parse_excluded_urls(EXCLUDED_URLS),
        default_span_details=span_details,
        tracer_provider=current_provider(),
        exclude_spans=["receive", "send"],
    )
    return tracer, middleware


def current_trace_ids() -> tuple[str | None, str | None]:
    """The current span's trace and span ids as hex, for log lines."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
