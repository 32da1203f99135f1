"""Overload well past capacity, on a real server with a slow model and a short deadline.

Admission control must answer the excess at once (503 + Retry-After) instead of letting it age
in the queue, and every request must get an answer: 200, 503 or 504, never a dropped connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from models.registry import ModelRegistry
from tests.support.models import MODEL, register_slow
from tests.support.process import INFER_BODY, Load, Outcome, metric, running

# Several forward passes: about nine here, two or three on a CI machine seen 3.5 times slower.
# At 0.2 s a pass on that machine took the whole deadline, and a request admitted to an idle
# server missed it as often as not.
DEADLINE_S = 0.5
CLIENTS = 32
LOAD_S = 3.0
SERVER_SLACK_S = 1.0  # event-loop lag on a busy 2-core machine (one CI run saw 0.503 s)
CLIENT_SLACK_S = 5.0  # 32 clients on one event loop, sharing the cores with the server


@pytest.fixture(scope="module")
def slow_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version whose every batch costs a 1000 x 1000 matrix product (0.05 to 0.2 s), promoted."""
    work = tmp_path_factory.mktemp("overload-registry")
    registry = ModelRegistry(work / "registry")
    register_slow(registry, "1.0.0", work, seed=0, size=1000)
    registry.promote(MODEL, "1.0.0", "production", actor="tests")
    return work / "registry"


def server_latencies(logs: str, status: int) -> list[float]:
    """Seconds the server took for each /infer it answered with `status` (its access log)."""
    seconds = []
    for line in logs.splitlines():
        if '"route":"/infer"' not in line.replace(" ", ""):
            continue
        entry = json.loads(line)
        if entry.get("status") == status:
            seconds.append(entry["latency_ms"] / 1000)
    return seconds


@dataclass(frozen=True)
class Overload:
    """What every request got, and the server's access log, after LOAD_S of overload."""

    outcomes: list[Outcome]
    logs: str

    def with_status(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


@pytest.fixture(scope="module")
def overload(tmp_path_factory: pytest.TempPathFactory, slow_registry: Path) -> Overload:
    env = {
        "FRAMEWORM_REQUEST_TIMEOUT_MS": str(int(DEADLINE_S * 1000)),
        "FRAMEWORM_MAX_BATCH_SIZE": "1",  # capacity: one item per forward pass
        "FRAMEWORM_TORCH_THREADS": "1",
    }

    async def drive(url: str) -> list[Outcome]:
        load = Load(url, CLIENTS, timeout_s=10)
        load.start()
        await asyncio.sleep(LOAD_S)
        return await load.finish()

    with running(tmp_path_factory.mktemp("overload"), slow_registry, env) as server:
        outcomes = asyncio.run(drive(server.url))
    # Read once the server has stopped: access lines are written in batches until then.
    return Overload(outcomes, server.logs())


def test_overload_sheds_the_excess_at_once_and_answers_every_request(
    overload: Overload, record_property: Callable[[str, object], None]
) -> None:
    served, shed, expired = (overload.with_status(s) for s in (200, 503, 504))
    counts = {200: len(served), 503: len(shed), 504: len(expired)}
    unanswered = [o for o in overload.outcomes if o.status not in counts]
    assert not unanswered, unanswered[:5]
    # Overloaded: it turned away more than it served. (How many more depends on how fast the
    # 32 clients' own event loop sends again: 1.9 times on a busy CI machine, 10 times here.)
    assert served and len(shed) > len(served), f"not past capacity: {counts}"
    for outcome in shed:
        assert outcome.content_type.startswith("application/problem+json")
        assert outcome.code == "overloaded"
        assert outcome.retry_after is not None and int(outcome.retry_after) >= 1
    for outcome in expired:
        assert outcome.code == "deadline-exceeded"
    # The server's own clock (its access log): admitted requests end by their deadline plus
    # slack, and the shed ones are answered at once, not after aging in line until it.
    admitted_server_s = server_latencies(overload.logs, 200) + server_latencies(overload.logs, 504)
    shed_server_s = server_latencies(overload.logs, 503)
    assert len(admitted_server_s) == len(served) + len(expired)
    assert len(shed_server_s) == len(shed)
    assert max(admitted_server_s) < DEADLINE_S + SERVER_SLACK_S
    # Aged until the deadline, the median would be past it; half of it leaves room for the
    # event loop's lag on a busy machine (a quarter was seen failing at 68 ms, once).
    assert statistics.median(shed_server_s) < DEADLINE_S / 2
    # Seen from the clients (whose own event loop is busy): bounded too, more loosely.
    assert max(o.seconds for o in overload.outcomes) < DEADLINE_S + CLIENT_SLACK_S
    record_property("requests", len(overload.outcomes))
    record_property("counts", counts)
    record_property("served_p50_client_s", round(statistics.median(o.seconds for o in served), 4))
    record_property("served_max_client_s", round(max(o.seconds for o in served), 4))
    record_property("admitted_max_server_s", round(max(admitted_server_s), 4))
    record_property("shed_p50_client_s", round(statistics.median(o.seconds for o in shed), 4))
    record_property("shed_p50_server_s", round(statistics.median(shed_server_s), 4))
    record_property("shed_max_server_s", round(max(shed_server_s), 4))


def test_under_overload_admitted_requests_are_served_rather_than_timed_out(
    overload: Overload,
) -> None:
    """Without admission control nearly every request would wait out its deadline in the queue
    (32 clients, five to twenty forward passes a second, 0.5 s deadlines). The bound leaves
    room for a machine that turns busy mid-run: admission judges by the batch times seen so far."""
    admitted = len(overload.with_status(200)) + len(overload.with_status(504))
    counts = {s: len(overload.with_status(s)) for s in (200, 503, 504)}
    assert len(overload.with_status(504)) <= 0.25 * admitted, counts


BUSY = 20


def scrape_queue_depth(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("frameworm_queue_depth"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_queued_request_whose_client_went_away_is_dropped_and_logged_499(
    tmp_path: Path, slow_registry: Path
) -> None:
    """Clients that give up (their own timeout) must not cost the model a forward pass each."""
    env = {
        "FRAMEWORM_MAX_BATCH_SIZE": "1",
        "FRAMEWORM_REQUEST_TIMEOUT_MS": "30000",
        "FRAMEWORM_TORCH_THREADS": "1",
    }
    body = json.dumps(INFER_BODY).encode()

    def request(request_id: str) -> bytes:
        return (
            b"POST /infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    with running(tmp_path, slow_registry, env) as server:
        busy = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(BUSY)]
        try:
            for sock in busy:  # about two seconds of forward passes, one item each
                sock.sendall(request("busy"))
            with httpx.Client(base_url=server.url) as client:
                deadline = time.monotonic() + 10
                while scrape_queue_depth(client) < BUSY // 2:  # the model is busy for a while
                    assert time.monotonic() < deadline, "the busy requests never queued"
                    time.sleep(0.02)
            for i in range(3):  # queued behind them; the clients go away at once
                with socket.create_connection(("127.0.0.1", server.port)) as gone:
                    gone.sendall(request(f"gone-{i}"))
                    time.sleep(0.05)
            for sock in busy:
                sock.settimeout(30)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for sock in busy:
                sock.close()

        async def counts() -> tuple[float, float]:
            async with httpx.AsyncClient(base_url=server.url) as client:
                shed = await metric(client, "frameworm_requests_shed_total", reason="disconnected")
                return shed, await metric(client, "frameworm_batch_size_count")

        shed, batches = asyncio.run(counts())
        # Gone before the server read the body, a request ends there; gone once queued, it is
        # dropped from the queue (counted as shed). Either way the model never runs it.
        assert shed <= 3
        assert batches == BUSY
    statuses = {
        entry["request_id"]: entry["status"]
        for entry in (json.loads(line) for line in server.logs().splitlines() if "gone-" in line)
        if "status" in entry
    }
    assert statuses == {"gone-0": 499, "gone-1": 499, "gone-2": 499}
