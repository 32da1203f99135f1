"""Observability of a real `frameworm serve` process, read by the real tools.

One server per module (auth on, a metrics token, tracing to an in-test OTLP/gRPC receiver at
ratio 1; a request with a microsecond deadline is shed) serves most tests; two short-lived servers
cover sampling at ratio 0 (over OTLP/HTTP) and a collector that is down. `promtool` checks the
exposition, a real Prometheus scrapes it, and the server's own log file is read back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.config import Settings
from app.production import APIKeyAuth
from app.production.tracing import MAX_ATTRIBUTE_CHARS
from tests.support import free_port, require_executable
from tests.support.otlp import ExportedSpan, SpanSink, otlp_grpc_receiver, otlp_http_receiver
from tests.support.server import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
DIGIT = (ROOT / "models" / "demo" / "samples" / "digit-3.png").read_bytes()
PEPPER = "pepper-for-the-observability-tests-0123456789"
METRICS_TOKEN = "metrics-token-4f1c9e"  # a test value, not a secret
LOG_WAIT_S = 5.0
READY_TIMEOUT_S = 90.0
SHUTDOWN_TIMEOUT_S = 10.0  # the drain budget: no drain delay, then this
DESIGN_METRICS = (
    "frameworm_inference_duration_seconds_bucket",
    "frameworm_queue_wait_seconds_bucket",
    "frameworm_batch_size_bucket",
    "frameworm_queue_depth",
    "frameworm_inflight_requests",
    "frameworm_model_info",
    "frameworm_model_ready",
    "frameworm_auth_failures_total",
    "frameworm_rate_limited_total",
    "frameworm_requests_shed_total",
)


@contextmanager
def serve(directory: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    """As tests.support.server.serve, with more time to get ready on a loaded CI machine."""
    server = start_server(directory, env=env)
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield server
    finally:
        server.terminate()


def traceparent() -> tuple[str, str, str]:
    """A sampled W3C traceparent header and its trace and parent span ids."""
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


# ------------------------------------------------------------------------------ server side
@dataclass
class Frameworm:
    server: ServerProcess
    client: httpx.Client
    key: str
    key_id: str
    spans: SpanSink

    def infer(self, **headers: str) -> httpx.Response:
        response = self.client.post(
            "/infer",
            files={"image": ("digit-3.png", DIGIT, "image/png")},
            headers={"x-api-key": self.key, **headers},
        )
        assert response.status_code == 200, response.text
        return response

    def metrics(self, accept: str = "text/plain") -> httpx.Response:
        return self.client.get(
            "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}", "accept": accept}
        )

    def samples(self) -> list[Sample]:
        response = self.metrics()
        assert response.status_code == 200, response.text
        return [s for f in text_string_to_metric_families(response.text) for s in f.samples]

    def access_lines(self, request_ids: set[str]) -> list[dict[str, Any]]:
        """The access-log lines of these requests, once each has one (they follow the reply)."""
        deadline = time.monotonic() + LOG_WAIT_S
        while True:
            lines = [
                line
                for line in log_entries(self.server)
                if line.get("logger") == "frameworm.access"
                and line.get("request_id") in request_ids
            ]
            if {line["request_id"] for line in lines} == request_ids:
                return lines
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no access-log line for {request_ids - {x['request_id'] for x in lines}}"
                )
            time.sleep(0.05)


def log_entries(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line the server wrote (stdout and stderr), each parsed as one JSON object."""
    entries = []
    for line in server.logs().splitlines():
        if line.strip():
            entry = json.loads(line)  # fails the test on any line that is not JSON
            assert isinstance(entry, dict), line
            entries.append(entry)
    return entries


def create_key(home: Path) -> tuple[str, str]:
    settings = Settings(
        _env_file=None,
        api_keys_file=home / "api-keys.json",
        api_key_pepper=PEPPER,
    )
    key = APIKeyAuth(settings=settings).create_key("alice")
    return key, key.split("_")[1]


def tensor(items: int) -> list[Any]:
    return [[[[0.25] * 28 for _ in range(28)]] for _ in range(items)]


@pytest.fixture(scope="module")
def frameworm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frameworm]:
    home = tmp_path_factory.mktemp("observed")
    key, key_id = create_key(home)
    env = {
        "FRAMEWORM_AUTH_ENABLED": "true",
        "FRAMEWORM_API_KEYS_FILE": str(home / "api-keys.json"),
        "FRAMEWORM_API_KEY_PEPPER": PEPPER,
        "FRAMEWORM_METRICS_TOKEN": METRICS_TOKEN,
        "FRAMEWORM_RATE_LIMIT": "10000/minute",
        "FRAMEWORM_MAX_QUEUE_ITEMS": "4",  # a 5-item request can never run here: 413
        "FRAMEWORM_OTLP_PROTOCOL": "grpc",
        "FRAMEWORM_TRACE_SAMPLE_RATIO": "1",
    }
    with otlp_grpc_receiver() as spans:
        env["FRAMEWORM_OTLP_ENDPOINT"] = spans.endpoint
        with (
            serve(home, env=env) as server,
            httpx.Client(base_url=server.url, timeout=10) as client,
        ):
            yield Frameworm(server, client, key, key_id, spans)


@dataclass(frozen=True)
class Traffic:
    request_ids: set[str]
    v2_request_id: str
    infer_request_id: str
    failed_auth_request_id: str
    shed_request_id: str
    unknown_request_id: str
    body_marker: str
    wrong_secret: str


@pytest.fixture(scope="module")
def traffic(frameworm: Frameworm) -> Traffic:
    """One of each kind of request: served, v2, failed auth, shed, unknown path, bad body."""
    kinds = ("infer", "v2", "auth", "shed", "unknown", "body")
    ids = {kind: f"{kind}-{uuid.uuid4().hex[:12]}" for kind in kinds}
    marker, wrong_secret = f"BODY-MARKER-{uuid.uuid4().hex}", "Wr0ngSecret" * 4
    client, key = frameworm.client, frameworm.key
    frameworm.infer(**{"x-request-id": ids["infer"]})
    v2 = client.post(
        "/v2/models/cnn-digits/infer",
        json={
            "inputs": [
                {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}
            ]
        },
        headers={"x-api-key": key, "x-request-id": ids["v2"]},
    )
    assert v2.status_code == 200, v2.text
    failed = client.post(
        "/infer",
        json={"inputs": {"image": tensor(1)}},
        headers={"x-api-key": f"fw_0123456789abcdef_{wrong_secret}", "x-request-id": ids["auth"]},
    )
    assert failed.status_code == 401, failed.text
    # A v2 client's timeout of 1 us has passed by the time the request reaches the batcher:
    # shed with 504 before the model spends time on it.
    shed = client.post(
        "/v2/models/cnn-digits/infer",
        json={
            "inputs": [
                {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}
            ],
            "parameters": {"timeout": 1},
        },
        headers={"x-api-key": key, "x-request-id": ids["shed"]},
    )
    assert shed.status_code == 504, shed.text
    too_large = client.post(
        "/infer", json={"inputs": {"image": tensor(5)}}, headers={"x-api-key": key}
    )
    assert too_large.status_code == 413, too_large.text
    unknown = client.get(
        f"/no/such/{ids['unknown']}", headers={"x-api-key": key, "x-request-id": ids["unknown"]}
    )
    assert unknown.status_code == 404, unknown.text
    body = client.post(
        "/infer",
        json={"inputs": {"image": marker}},
        headers={"x-api-key": key, "x-request-id": ids["body"]},
    )
    assert body.status_code in (400, 422), body.text
    return Traffic(
        request_ids=set(ids.values()),
        v2_request_id=ids["v2"],
        infer_request_id=ids["infer"],
        failed_auth_request_id=ids["auth"],
        shed_request_id=ids["shed"],
        unknown_request_id=ids["unknown"],
        body_marker=marker,
        wrong_secret=wrong_secret,
    )


# ---------------------------------------------------------------------------------- metrics
def test_promtool_finds_the_live_metrics_clean(frameworm: Frameworm, traffic: Traffic) -> None:
    promtool = require_executable("promtool")
    exposition = frameworm.metrics()
    assert exposition.status_code == 200
    checked = subprocess.run(  # a fixed tool on our own output
        [promtool, "check", "metrics"],
        input=exposition.content,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", checked.stdout.decode()


def test_every_design_metric_is_exposed_after_traffic(
    frameworm: Frameworm, traffic: Traffic
) -> None:
    samples = frameworm.samples()
    assert set(DESIGN_METRICS) <= {s.name for s in samples}

    def one(name: str) -> Sample:
        (sample,) = [s for s in samples if s.name == name]
        return sample

    info = one("frameworm_model_info")
    assert info.labels == {
        "model": "cnn-digits",
        "version": "1.0.0",
        "stage": "production",
        "device": "cpu",
    }
    assert info.value == 1
    assert one("frameworm_model_ready").value == 1
    failures = {
        s.labels["reason"]: s.value for s in samples if s.name == "frameworm_auth_failures_total"
    }
    assert failures.get("unknown", 0) >= 1, failures
    shed = {
        s.labels["reason"]: s.value for s in samples if s.name == "frameworm_requests_shed_total"
    }
    assert shed.get("deadline", 0) >= 1, shed


def test_http_metrics_are_labelled_by_route_template(
    frameworm: Frameworm, traffic: Traffic
) -> None:
    handlers = {s.labels["handler"] for s in frameworm.samples() if s.name == "http_requests_total"}
    assert {"/infer", "/v2/models/{name}/infer"} <= handlers
    assert not any("cnn-digits" in h for h in handlers), handlers


def test_an_unknown_path_creates_no_label_value(frameworm: Frameworm, traffic: Traffic) -> None:
    def label_values() -> set[str]:
        return {v for s in frameworm.samples() for v in s.labels.values()}

    before = label_values()
    path = f"/unknown/{uuid.uuid4().hex}"
    assert frameworm.client.get(path, headers={"x-api-key": frameworm.key}).status_code == 404
    after = label_values()
    assert after - before == set()
    assert not any(traffic.unknown_request_id in v for v in after)


def test_latency_histograms_have_a_half_second_bucket(
    frameworm: Frameworm, traffic: Traffic
) -> None:
    samples = frameworm.samples()
    for histogram in (
        "frameworm_inference_duration_seconds",
        "frameworm_queue_wait_seconds",
        "http_request_duration_seconds",
    ):
        bounds = {s.labels["le"] for s in samples if s.name == f"{histogram}_bucket"}
        assert "0.5" in bounds, (histogram, bounds)


def test_no_label_value_holds_a_key_or_a_request_id(frameworm: Frameworm, traffic: Traffic) -> None:
    values = {v for s in frameworm.samples() for v in s.labels.values()}
    secrets = {frameworm.key, frameworm.key_id, traffic.wrong_secret, *traffic.request_ids}
    leaked = {v for v in values for secret in secrets if secret in v}
    assert leaked == set()


def test_metrics_need_the_bearer_token_when_one_is_set(frameworm: Frameworm) -> None:
    assert frameworm.client.get("/metrics").status_code == 401
    wrong = frameworm.client.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["content-type"] == "application/problem+json"
    # An API key is not a metrics token.
    with_key = frameworm.client.get("/metrics", headers={"x-api-key": frameworm.key})
    assert with_key.status_code == 401
    assert frameworm.metrics().status_code == 200


def test_openmetrics_is_served_when_asked_for(frameworm: Frameworm, traffic: Traffic) -> None:
    plain = frameworm.metrics()
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    negotiated = frameworm.metrics("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert negotiated.status_code == 200
    assert negotiated.headers["content-type"].startswith("application/openmetrics-text")
    assert negotiated.text.endswith("# EOF\n")
    assert "frameworm_batch_size_bucket" in negotiated.text


def test_there_are_no_gpu_series_without_an_nvidia_driver(
    frameworm: Frameworm, traffic: Traffic
) -> None:
    gpu = [s for s in frameworm.samples() if s.name.startswith("frameworm_gpu_")]
    assert gpu == []


# ------------------------------------------------------------------------------- Prometheus
@contextmanager
def prometheus(directory: Path, target: str) -> Iterator[httpx.Client]:
    """A real Prometheus scraping `target` every second; stopped by pid."""
    binary = require_executable("prometheus")
    config = directory / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "frameworm",
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "authorization": {"type": "Bearer", "credentials": METRICS_TOKEN},
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        ),
        encoding="utf-8",
    )
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # a fixed tool with our own arguments
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            eventually(lambda: _ready(client), 20, lambda: log_path.read_text())
            yield client
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def eventually(check: Callable[[], bool], timeout_s: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s}s: {why()}")
        time.sleep(0.2)


def query(client: httpx.Client, promql: str) -> list[float]:
    response = client.get("/api/v1/query", params={"query": promql})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    return [float(result["value"][1]) for result in body["data"]["result"]]


def test_prometheus_reads_request_rate_p99_and_batch_sizes(
    frameworm: Frameworm, traffic: Traffic, tmp_path: Path
) -> None:
    with prometheus(tmp_path, f"127.0.0.1:{frameworm.server.port}") as prom:
        eventually(
            lambda: query(prom, 'up{job="frameworm"}') == [1.0],
            15,
            lambda: prom.get("/api/v1/targets").text,
        )
        for _ in range(12):  # spread over several scrapes, so rates have two samples
            frameworm.infer()
            time.sleep(0.25)
        rate = 'sum(rate(http_requests_total{handler="/infer",status="2xx"}[30s]))'
        p99 = (
            "histogram_quantile(0.99, sum by (le) "
            "(rate(http_request_duration_seconds_bucket[30s])))"
        )
        batches = 'frameworm_batch_size_count{model="cnn-digits"}'
        eventually(
            lambda: (
                [v for v in query(prom, rate) if v > 0] != []
                and [v for v in query(prom, p99) if v == v] != []  # NaN != NaN
                # The last requests may have come after the last scrape: the next one has them.
                and [v for v in query(prom, batches) if v >= 12] != []
            ),
            15,
            lambda: f"{query(prom, rate)=} {query(prom, p99)=} {query(prom, batches)=}",
        )
        (latency,) = query(prom, p99)
        assert 0 < latency <= 10


# ------------------------------------------------------------------------------------- logs
def test_every_request_leaves_one_json_access_line(frameworm: Frameworm, traffic: Traffic) -> None:
    lines = frameworm.access_lines(traffic.request_ids)
    assert len(lines) == len(traffic.request_ids)
    fields = {
        "timestamp",
        "level",
        "request_id",
        "method",
        "route",
        "status",
        "latency_ms",
        "model",
        "version",
        "trace_id",
        "span_id",
        "principal",
        "owner",
    }
    for line in lines:
        assert fields <= line.keys(), line
        assert line["level"] == "info"
        assert isinstance(line["latency_ms"], float | int) and line["latency_ms"] >= 0
    by_id = {line["request_id"]: line for line in lines}
    served = by_id[traffic.infer_request_id]
    assert served["method"] == "POST"
    assert served["route"] == "/infer"
    assert served["status"] == 200
    assert (served["model"], served["version"]) == ("cnn-digits", "1.0.0")
    assert (served["principal"], served["owner"]) == (frameworm.key_id, "alice")
    assert by_id[traffic.v2_request_id]["route"] == "/v2/models/{name}/infer"
    assert by_id[traffic.failed_auth_request_id]["status"] == 401
    assert by_id[traffic.failed_auth_request_id]["principal"] is None
    assert by_id[traffic.shed_request_id]["status"] == 504
    assert by_id[traffic.unknown_request_id]["route"] is None


def test_a_request_refused_before_routing_is_logged_with_its_path(
    frameworm: Frameworm, traffic: Traffic
) -> None:
    (line,) = frameworm.access_lines({traffic.failed_auth_request_id})
    assert line["route"] is None
    assert line["path"] == "/infer"
    assert line["status"] == 401


def test_uvicorn_lines_are_json_and_no_body_or_key_is_logged(
    frameworm: Frameworm, traffic: Traffic
) -> None:
    frameworm.access_lines(traffic.request_ids)  # everything has been written
    entries = log_entries(frameworm.server)  # every line is JSON
    assert any(
        e["logger"].startswith("uvicorn") and "Uvicorn running on" in e["message"] for e in entries
    )
    text = frameworm.server.logs()
    for secret in (frameworm.key, frameworm.key.split("_", 2)[2], traffic.wrong_secret):
        assert secret not in text
    assert traffic.body_marker not in text
    assert PEPPER not in text and METRICS_TOKEN not in text


# ---------------------------------------------------------------------------------- tracing
def trace_of(response: httpx.Response) -> tuple[str, str]:
    """(trace id, span id) from the W3C `traceresponse` header."""
    version, trace_id, span_id, flags = response.headers["traceresponse"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1, "the trace is sampled"
    return trace_id, span_id


SERVER = Span.SpanKind.SPAN_KIND_SERVER


def traced(frameworm: Frameworm, response: httpx.Response, *names: str) -> dict[str, ExportedSpan]:
    """The response's trace as exported, by span name ("server" for the server span)."""
    trace_id, span_id = trace_of(response)

    def complete(got: list[ExportedSpan]) -> bool:
        mine = [s for s in got if s.trace_id == trace_id]
        return any(s.kind == SERVER for s in mine) and set(names) <= {s.name for s in mine}

    spans = [s for s in frameworm.spans.wait_for(complete) if s.trace_id == trace_id]
    (server,) = [s for s in spans if s.kind == SERVER]
    assert server.span_id == span_id  # traceresponse names the server span
    return {"server": server} | {s.name: s for s in spans if s.kind != SERVER}


def test_an_inference_is_traced_from_the_server_span_to_the_forward_pass(
    frameworm: Frameworm,
) -> None:
    response = frameworm.infer()
    spans = traced(frameworm, response, "inference.queue", "inference.forward")
    server, queued, forward = spans["server"], spans["inference.queue"], spans["inference.forward"]
    assert server.service == "frameworm"
    assert queued.parent_span_id == server.span_id
    assert forward.attributes["frameworm.batch_size"] == 1
    assert forward.attributes["frameworm.model"] == "cnn-digits"
    assert (server.trace_id, server.span_id) in forward.links
    assert forward.parent_span_id == server.span_id  # the first sampled request's child


def test_the_server_span_is_named_by_its_route_template(frameworm: Frameworm) -> None:
    server = traced(frameworm, frameworm.infer())["server"]
    assert server.name == "POST /infer"
    assert server.attributes["http.route"] == "/infer"


def test_a_sampled_caller_trace_is_continued_and_answered(frameworm: Frameworm) -> None:
    header, trace_id, parent_id = traceparent()
    response = frameworm.infer(traceparent=header)
    assert trace_of(response)[0] == trace_id
    assert traced(frameworm, response)["server"].parent_span_id == parent_id


def test_the_access_line_carries_the_exported_span_ids(frameworm: Frameworm) -> None:
    response = frameworm.infer()
    server = traced(frameworm, response)["server"]
    (line,) = frameworm.access_lines({response.headers["x-request-id"]})
    assert (line["trace_id"], line["span_id"]) == (server.trace_id, server.span_id)


def test_an_unsampled_caller_s_trace_id_is_on_the_access_line(frameworm: Frameworm) -> None:
    """Not traced here (the caller did not sample it), but the caller's logs and this
    request's line must still join: the line had trace_id null."""
    header, trace_id, _ = traceparent()
    response = frameworm.infer(traceparent=header[:-2] + "00")
    (line,) = frameworm.access_lines({response.headers["x-request-id"]})
    assert (line["trace_id"], line["span_id"]) == (trace_id, None)


def test_probes_and_metrics_produce_no_spans(frameworm: Frameworm) -> None:
    quiet: list[str] = []
    for path in ("/healthz", "/readyz", "/readyz?verbose", "/metrics"):
        header, trace_id, _ = traceparent()
        quiet.append(trace_id)
        response = frameworm.client.get(
            path, headers={"traceparent": header, "authorization": f"Bearer {METRICS_TOKEN}"}
        )
        assert response.status_code == 200, (path, response.text)
        assert "traceresponse" not in response.headers
    # A traced request after them: once its spans are in, theirs would have been too.
    traced(frameworm, frameworm.infer())
    spans = frameworm.spans.wait_for(lambda got: True)
    assert [s.name for s in spans if s.trace_id in quiet] == []
    targets = {s.attributes.get("http.target") for s in spans}
    assert targets.isdisjoint({"/healthz", "/readyz", "/metrics"}), targets


# -------------------------------------------------------------- other servers, other settings
def test_at_ratio_zero_only_a_sampled_caller_is_traced(tmp_path: Path) -> None:
    with otlp_http_receiver() as sink:
        env = {
            "FRAMEWORM_OTLP_ENDPOINT": sink.endpoint,
            "FRAMEWORM_OTLP_PROTOCOL": "http",
            "FRAMEWORM_TRACE_SAMPLE_RATIO": "0",
        }
        with serve(tmp_path, env=env) as server, httpx.Client(base_url=server.url) as client:
            files = {"image": ("digit-3.png", DIGIT, "image/png")}
            for _ in range(3):
                unsampled = client.post("/infer", files=files)
                assert unsampled.status_code == 200
            header, trace_id, _ = traceparent()
            sampled = client.post("/infer", files=files, headers={"traceparent": header})
            assert sampled.status_code == 200
            spans = sink.wait_for(
                lambda got: (
                    {SERVER, Span.SpanKind.SPAN_KIND_INTERNAL}
                    <= {s.kind for s in got if s.trace_id == trace_id}
                )
            )
    assert {s.trace_id for s in spans} == {trace_id}


def test_a_down_collector_costs_requests_nothing_and_shutdown_stays_bounded(
    tmp_path: Path, refused_port: int
) -> None:
    env = {
        "FRAMEWORM_OTLP_ENDPOINT": f"http://127.0.0.1:{refused_port}",
        "FRAMEWORM_OTLP_PROTOCOL": "grpc",
        "FRAMEWORM_TRACE_SAMPLE_RATIO": "1",
        "FRAMEWORM_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
    }
    with serve(tmp_path, env=env) as server, httpx.Client(base_url=server.url) as client:
        files = {"image": ("digit-3.png", DIGIT, "image/png")}
        for _ in range(5):
            started = time.monotonic()
            response = client.post("/infer", files=files, timeout=5)
            assert response.status_code == 200, response.text
            assert time.monotonic() - started < 2
        time.sleep(1.5)  # past the exporter's schedule delay: an export to nowhere is under way
        started = time.monotonic()
        code = server.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10)
        elapsed = time.monotonic() - started
    assert code == 0, server.logs()
    assert elapsed < SHUTDOWN_TIMEOUT_S, server.logs()
    log_entries(server)  # the exporter's complaints are JSON lines too


def test_a_caller_s_malformed_baggage_and_tracestate_reach_no_log_line(
    frameworm: Frameworm,
) -> None:
    """Baggage was parsed (and each malformed member logged as a warning quoting it: 180 lines
    for one 8 KB header, without a key), as were a tracestate's bad pairs. The trace goes on."""
    marker = "rogue-member-7f3a"
    header, trace_id, _ = traceparent()
    response = frameworm.infer(
        traceparent=header,
        baggage=",".join([marker] * 100),
        tracestate=f"{marker}=,k=v",
    )
    assert trace_of(response)[0] == trace_id
    traced(frameworm, response)  # exported: the request was traced
    (line,) = frameworm.access_lines({response.headers["x-request-id"]})
    assert line["trace_id"] == trace_id
    assert marker not in frameworm.server.logs()


def test_a_long_url_is_cut_in_its_span(frameworm: Frameworm) -> None:
    """The span copied a request's path whole: a caller without a key, sending sampled
    traceparents and 60 KB paths, could fill the export queue with a quarter of a GB."""
    header, trace_id, _ = traceparent()
    path = "/" + "a" * 20_000
    assert frameworm.client.get(path, headers={"traceparent": header}).status_code in (401, 404)
    got = frameworm.spans.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
    spans = [s for s in got if s.trace_id == trace_id]
    values = [v for s in spans for v in s.attributes.values() if isinstance(v, str)]
    assert any(v.startswith("/aaa") for v in values), spans
    assert max(len(v) for v in values) <= MAX_ATTRIBUTE_CHARS
