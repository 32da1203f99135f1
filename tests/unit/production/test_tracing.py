"""setup_tracing: off without an endpoint, protocol by port, bounded and non-blocking export."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace

from app.production import setup_tracing, shutdown_tracing
from app.production.tracing import (
    HTTP_PORT,
    _exporter,
    current_provider,
    loggable_endpoint,
    resolve_protocol,
)
from tests.support import free_port


def dead_collector() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def flush_providers() -> Iterator[None]:
    yield
    shutdown_tracing(2.0)


@pytest.mark.parametrize("endpoint", [None, ""])
def test_no_endpoint_means_tracing_off_with_a_no_op_tracer(endpoint: str | None) -> None:
    tracer = setup_tracing("svc", endpoint)
    assert isinstance(tracer, trace.NoOpTracer)
    assert current_provider() is None
    with tracer.start_as_current_span("nothing") as span:
        assert not span.is_recording()


@pytest.mark.parametrize(
    ("endpoint", "protocol", "expected"),
    [
        ("http://jaeger:4317", None, "grpc"),
        ("http://collector:4318", None, "http"),
        ("http://collector:9999", "http", "http"),
        ("http://collector:4318", "grpc", "grpc"),
        ("http://collector", None, "grpc"),
        # Without a scheme, urlsplit read `collector` as one and found no port at all.
        ("collector:4318", None, "http"),
        ("localhost:4318", None, "http"),
        ("127.0.0.1:4318", None, "http"),
        ("[::1]:4318", None, "http"),
        ("u:p@collector:4318/otlp", None, "http"),
        ("collector:4317", None, "grpc"),
        ("collector", None, "grpc"),
    ],
)
def test_the_protocol_follows_the_port_unless_named(
    endpoint: str, protocol: str | None, expected: str
) -> None:
    assert resolve_protocol(endpoint, protocol) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("endpoint", ["collector:http", "u:s3cr3t@collector:x", "http://c:99999"])
def test_an_endpoint_whose_port_is_not_a_port_is_refused_without_its_credentials(
    endpoint: str,
) -> None:
    with pytest.raises(ValueError, match="invalid port") as caught:
        resolve_protocol(endpoint)
    assert "s3cr3t" not in str(caught.value)


def test_a_scheme_less_4318_endpoint_exports_over_http_to_an_http_url() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    setup_tracing("svc", f"127.0.0.1:{HTTP_PORT}", export_timeout_s=0.2)
    provider = current_provider()
    assert provider is not None
    processor = provider._active_span_processor._span_processors[0]
    exporter = processor._batch_processor._exporter  # type: ignore[attr-defined]
    assert isinstance(exporter, OTLPSpanExporter)
    # requests has no adapter for a URL without a scheme: plain HTTP, as gRPC is without https.
    assert exporter._endpoint == f"http://127.0.0.1:{HTTP_PORT}/v1/traces"


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="protocol"):
        resolve_protocol("http://x:4317", "udp")  # type: ignore[arg-type]


def test_the_log_line_names_the_collector_and_protocol(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.production.tracing")
    port = free_port()
    setup_tracing("svc", f"http://127.0.0.1:{port}/otlp", protocol="http", export_timeout_s=0.2)
    assert f"tracing to http://127.0.0.1:{port}/otlp over OTLP/http" in caplog.text


@pytest.mark.parametrize(
    ("endpoint", "logged"),
    [
        ("https://u:p%40ss@collector:4318/v1/traces?token=t#f", "https://collector:4318/v1/traces"),
        ("http://u:p@[fd00::1]:4317", "http://[fd00::1]:4317"),
        ("https://u:p/a?b#c@collector", "https://collector"),  # unencoded, still hidden
        ("u:p@collector:4317", "collector:4317"),  # gRPC's form without a scheme
        ("collector:4317", "collector:4317"),
        ("http://collector:4318", "http://collector:4318"),
    ],
)
def test_loggable_endpoint_keeps_scheme_host_port_and_path(endpoint: str, logged: str) -> None:
    assert loggable_endpoint(endpoint) == logged


def test_the_http_exporter_posts_to_the_v1_traces_path() -> None:
    exporter = _exporter("http://collector:4318/", "http", 1.0)
    assert exporter._endpoint == "http://collector:4318/v1/traces"  # type: ignore[attr-defined]
    exporter.shutdown()
    already = _exporter("http://collector:4318/v1/traces", "http", 1.0)
    assert already._endpoint == "http://collector:4318/v1/traces"  # type: ignore[attr-defined]
    already.shutdown()


def test_a_down_collector_is_waited_for_off_the_request_path_and_shutdown_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporting_threads: list[threading.Thread] = []
    export = OTLPSpanExporter.export

    def recorded(self: OTLPSpanExporter, spans: Any) -> Any:
        exporting_threads.append(threading.current_thread())
        return export(self, spans)

    monkeypatch.setattr(OTLPSpanExporter, "export", recorded)
    tracer = setup_tracing(
        "svc", dead_collector(), protocol="http", export_timeout_s=0.2, schedule_delay_s=0.05
    )
    for i in range(200):
        with tracer.start_as_current_span(f"request-{i}"):
            pass
    # A span's end only queues it: every export (each waits on the dead collector) runs on the
    # processor's own thread, never on the thread that served the request.
    deadline = time.monotonic() + 10
    while not exporting_threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exporting_threads
    assert threading.current_thread() not in exporting_threads
    started = time.monotonic()
    shutdown_tracing(1.0)
    assert time.monotonic() - started < 2.0


def test_the_export_queue_is_bounded() -> None:
    setup_tracing("svc", dead_collector(), export_timeout_s=0.2, max_queue_size=16)
    provider = current_provider()
    assert provider is not None
    processor = provider._active_span_processor._span_processors[0]
    assert processor._batch_processor._max_queue_size == 16  # type: ignore[attr-defined]


def test_a_zero_sample_ratio_records_nothing_new_but_follows_a_sampled_parent() -> None:
    tracer = setup_tracing("svc", dead_collector(), export_timeout_s=0.2, sample_ratio=0.0)
    with tracer.start_as_current_span("root") as root:
        assert not root.is_recording()
    parent = trace.SpanContext(
        trace_id=1,
        span_id=2,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    with tracer.start_as_current_span("child", context=context) as child:
        assert child.is_recording()


def test_setting_up_twice_neither_warns_nor_replaces_the_global_provider() -> None:
    setup_tracing("one", dead_collector(), export_timeout_s=0.2)
    first_global = trace.get_tracer_provider()
    tracer = setup_tracing("two", dead_collector(), export_timeout_s=0.2)
    assert trace.get_tracer_provider() is first_global
    with tracer.start_as_current_span("span") as span:
        assert span.is_recording()


@pytest.mark.parametrize(
    "kwargs", [{"sample_ratio": 1.5}, {"export_timeout_s": 0}, {"max_queue_size": 0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        setup_tracing("svc", "http://x:4317", **kwargs)  # type: ignore[arg-type]


def test_shutdown_without_tracing_is_a_no_op() -> None:
    assert shutdown_tracing(0.1) is True


@pytest.mark.parametrize(
    "endpoint",
    ["http://user:S3CRET@127.0.0.1:1", "http://127.0.0.1:4318/?token=S3CRET", "collector:abc"],
)
def test_setup_tracing_refuses_an_endpoint_the_exporters_cannot_use_as_given(
    endpoint: str,
) -> None:
    """gRPC dialled `user:S3CRET@127.0.0.1` as a host name and logged it at each failure; HTTP
    posted to `/?token=S3CRET/v1/traces`; `collector:abc` read as a scheme passed the check."""
    with pytest.raises(ValueError) as refused:
        setup_tracing("svc", endpoint)
    assert "S3CRET" not in str(refused.value)
