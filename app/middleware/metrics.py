"""HTTP metrics: prometheus-fastapi-instrumentator's default series, recorded by a pure ASGI layer.

The series are the ones the instrumentator's `metrics.default()` defines, with the same names,
labels and help, so its dashboards and queries work: `http_requests_total{method,status,handler}`,
`http_request_size_bytes` and `http_response_size_bytes{handler}` (Content-Length),
`http_request_duration_highr_seconds` and `http_request_duration_seconds{method,handler}`
(LATENCY_BUCKETS, so 0.5 s is a bucket edge).

The instrumentator's own middleware resolves the route a second time by walking the app's
routes, builds a Request, a Response and an Info, and looks up every labelled child, for each
request; its recorder alone cost about 50 µs a request on this kind of machine, more than the
rest of the telemetry. Here the route comes from `scope["route"]` after the response (set by
FastAPI's router and by the direct inference routes), the labelled children are looked up once
per (method, handler, status class), and the instrumentator's route resolution is used only for
requests answered before routing (401, 413, 429), which are rare. Labels stay bounded: a
handler must be one of the app's route templates (the instrumentator's resolution answers with
the raw path for a path one slash away from a route, so `/v2/models/<anything>/` refused
unauthenticated would have made new series), a request that matches none is not recorded, and
an unknown method is counted as `other`.
Sampled requests put their trace id on the latency histogram as an exemplar. The observations
are tallied on the event loop and reach prometheus_client's values in bulk (app/telemetry/tally.py).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Summary
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.telemetry.tally import HistogramTally, Tallies
from app.telemetry.tracing import is_traced, sampled_trace_id

# The instrumentator's defaults.
HIGHR_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2)
HIGHR_BUCKETS += (2.5, 3, 3.5, 4, 4.5, 5, 7.5, 10, 30, 60)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


class HttpMetrics:
    """The series, and their labelled children's tallies cached by (method, handler, status
    class)."""

    def __init__(
        self, registry: CollectorRegistry, buckets: tuple[float, ...], tallies: Tallies
    ) -> None:
        self.requests = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ["method", "status", "handler"],
            registry=registry,
        )
        self.request_size = Summary(
            "http_request_size_bytes",
            "Content length of incoming requests by handler. Only value of header is respected. "
            "Otherwise ignored. No percentile calculated. ",
            ["handler"],
            registry=registry,
        )
        self.response_size = Summary(
            "http_response_size_bytes",
            "Content length of outgoing responses by handler. Only value of header is respected. "
            "Otherwise ignored. No percentile calculated. ",
            ["handler"],
            registry=registry,
        )
        self.latency_highr = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more accurate "
            "percentile calculations. ",
            buckets=HIGHR_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. Made to be only used if aggregation by "
            "handler is important. ",
            ["method", "handler"],
            buckets=buckets,
            registry=registry,
        )
        self._tallies = tallies
        self._latency_highr = tallies.histogram(self.latency_highr)
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, HistogramTally]] = {}

    def observe(
        self,
        method: str,
        handler: str,
        status: int,
        seconds: float,
        sizes: tuple[int, int],
        trace_id: str | None,
    ) -> None:
        key = (method if method in METHODS else "other", handler, status // 100)
        children = self._children.get(key)
        if children is None:
            tallies = self._tallies
            children = self._children[key] = (
                tallies.counter(self.requests.labels(key[0], f"{key[2]}xx", handler)),
                tallies.summary(self.request_size.labels(handler)),
                tallies.summary(self.response_size.labels(handler)),
                tallies.histogram(self.latency.labels(key[0], handler)),
            )
        requests, request_size, response_size, latency = children
        requests.pending += 1
        request_size.observe(sizes[0])
        response_size.observe(sizes[1])
        self._latency_highr.observe(seconds)
        if trace_id:
            latency.observe_with_exemplar(seconds, {"trace_id": trace_id})
        else:
            latency.observe(seconds)


class HttpMetricsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry,
        tallies: Tallies,
        buckets: tuple[float, ...],
        handlers: frozenset[str],
        excluded_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.handlers = handlers - excluded_paths  # the route templates a label may name
        self.excluded_paths = excluded_paths  # probes and /metrics: by exact path or template
        self.metrics = HttpMetrics(registry, buckets, tallies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.excluded_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_size = 0

        async def send_counting(message: Message) -> None:
            nonlocal status, response_size
            if message["type"] == "http.response.start":
                status = message["status"]
                response_size = _content_length(message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = getattr(scope.get("route"), "path", None)
            handler = route or get_route_name(Request(scope), should_include_root_path=False)
            if handler in self.handlers:
                self.metrics.observe(
                    scope["method"],
                    handler,
                    status,
                    time.perf_counter() - started,
                    (_content_length(scope["headers"]), response_size),
                    sampled_trace_id() if is_traced(scope) else None,
                )


def _content_length(headers: Any) -> int:
    # One dict built in C rather than a loop in Python: a fifth of the bytecodes, for a lookup
    # made twice a request. (A repeated Content-Length, where the last would win here, never
    # gets this far: httptools refuses the request, and the app sends one.)
    value = dict(headers).get(b"content-length")
    if value is None:
        return 0
    # httptools accepts any number of leading zeros; int() refuses past 4,300 digits (Python's
    # limit on decimal conversion), which raised after the answer.
    digits = value.lstrip(b"0") or b"0"
    return int(digits) if digits.isdigit() and len(digits) <= 19 else 0
