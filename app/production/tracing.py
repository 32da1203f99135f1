"""OpenTelemetry tracing to an OTLP collector, or nothing at all.

`setup_tracing` builds its own `TracerProvider` and returns a tracer from it. The first
provider built in a process is also made the global one (OpenTelemetry allows one global set);
later calls build their own provider and leave the global alone. Spans are exported by a
`BatchSpanProcessor` in a background thread: its queue is bounded (spans are dropped when it is
full) and each export is bounded by `export_timeout_s`, so a down collector adds no latency to
requests and no memory growth.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
from typing import Literal
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from .otlp_endpoint import as_url, endpoint_problem

logger = logging.getLogger(__name__)

Protocol = Literal["grpc", "http"]
HTTP_PORT = 4318  # the OTLP/HTTP port; 4317 is OTLP/gRPC

_lock = threading.Lock()
_providers: list[TracerProvider] = []
_global_set = False
_atexit_registered = False


def resolve_protocol(endpoint: str, protocol: Protocol | None = None) -> Protocol:
    """`protocol` when given; otherwise HTTP for port 4318 and gRPC for anything else.

    The port is read with or without a scheme (`collector:4318` is HTTP, as is
    `http://collector:4318`); a port that is not a number is a ValueError.
    """
    if protocol is not None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"unknown OTLP protocol {protocol!r}; use 'grpc' or 'http'")
        return protocol
    try:
        port = urlsplit(as_url(endpoint)).port
    except ValueError:  # a port that is not a number, or out of range
        raise ValueError(
            f"OTLP endpoint {loggable_endpoint(endpoint)!r} has an invalid port"
        ) from None
    return "http" if port == HTTP_PORT else "grpc"


def _exporter(endpoint: str, protocol: Protocol, timeout_s: float) -> SpanExporter:
    # Imported here: each exporter pulls in its transport (grpcio or requests) only when used.
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        # requests needs a scheme; one without is plain HTTP, as gRPC is insecure without https.
        url = (endpoint if "://" in endpoint else "http://" + endpoint).rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        return HttpExporter(endpoint=url, timeout=timeout_s)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcExporter,
    )

    insecure = urlsplit(endpoint).scheme != "https"
    return GrpcExporter(endpoint=endpoint, insecure=insecure, timeout=timeout_s)


# A span attribute's longest value. The URL of a request is copied into its server span: a
# caller sending sampled traceparents and 60 KB paths, without a key, filled the export queue
# (2,048 spans) with a quarter of a GB while the collector was slow.
MAX_ATTRIBUTE_CHARS = 2048


def setup_tracing(
    service_name: str,
    endpoint: str | None = None,
    *,
    protocol: Protocol | None = None,
    sample_ratio: float = 1.0,
    export_timeout_s: float = 2.0,
    max_queue_size: int = 2048,
    schedule_delay_s: float = 1.0,
) -> trace.Tracer:
    """A tracer exporting to `endpoint`, or a no-op tracer when `endpoint` is empty.

    `sample_ratio` applies to new traces (parent-based: a sampled parent keeps its children).
    It defaults to 1.0, every trace, as the OpenTelemetry SDK does. The server passes 1.0: its
    TraceSampling middleware applies `Settings.trace_sample_ratio` before any span starts, and
    logs that ratio.
    """
    if not endpoint:
        return trace.NoOpTracer()
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError("sample_ratio must be between 0 and 1")
    if export_timeout_s <= 0 or max_queue_size < 1 or schedule_delay_s <= 0:
        raise ValueError("export_timeout_s, max_queue_size and schedule_delay_s must be positive")
    if (problem := endpoint_problem(endpoint)) is not None:
        raise ValueError(f"OTLP endpoint {loggable_endpoint(endpoint)!r}: {problem}")
    chosen = resolve_protocol(endpoint, protocol)
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        span_limits=SpanLimits(max_span_attribute_length=MAX_ATTRIBUTE_CHARS),
        # Its own exit hook would wait up to 30 s for a down collector; ours is bounded.
        shutdown_on_exit=False,
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            _exporter(endpoint, chosen, export_timeout_s),
            max_queue_size=max_queue_size,
            max_export_batch_size=min(512, max_queue_size),
            schedule_delay_millis=schedule_delay_s * 1000,
            export_timeout_millis=export_timeout_s * 1000,
        )
    )
    _remember(provider)
    logger.info(
        "tracing to %s over OTLP/%s, the SDK sampling %g of new traces",
        loggable_endpoint(endpoint),
        chosen,
        sample_ratio,
    )
    return provider.get_tracer(service_name)


def loggable_endpoint(endpoint: str) -> str:
    """The endpoint without the credentials a URL may carry (`https://user:password@host`):
    scheme, host, port and path only (a query may hold a token too), for the log line."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:  # no scheme (`collector:4317`, as gRPC takes it)
        scheme, rest = "", endpoint
    # Everything up to the last '@': a password may hold ':', '/', '?' or '#' unencoded, which a
    # URL parser would take for the port, path or query and leave in place.
    rest = rest.rpartition("@")[2]
    return scheme + sep + re.split(r"[?#]", rest, maxsplit=1)[0]


def _remember(provider: TracerProvider) -> None:
    global _global_set, _atexit_registered
    with _lock:
        _providers.append(provider)
        make_global = not _global_set and isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider
        )
        _global_set = True
        if not _atexit_registered:
            atexit.register(shutdown_tracing, 2.0)
            _atexit_registered = True
    if make_global:
        trace.set_tracer_provider(provider)


def current_provider() -> TracerProvider | None:
    """The provider of the latest `setup_tracing` call (for instrumentation), if any."""
    with _lock:
        return _providers[-1] if _providers else None


def shutdown_tracing(timeout_s: float = 5.0) -> bool:
    """Flush and shut down every provider made here; True when it finished within the bound.

    The SDK's flush ignores its timeout, so the work runs in a daemon thread that is waited
    for at most `timeout_s`; what is left behind is abandoned with the thread.
    """
    with _lock:
        providers, _providers[:] = list(_providers), []
    if not providers:
        return True

    def flush_all() -> None:
        for provider in providers:
            try:
                provider.force_flush()
                provider.shutdown()
            except Exception:
                logger.exception("tracing shutdown failed")

    worker = threading.Thread(target=flush_all, name="tracing-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        logger.warning("tracing did not flush within %.1fs; spans dropped", timeout_s)
        return False
    return True
