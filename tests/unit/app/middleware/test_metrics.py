"""HttpMetricsMiddleware: the instrumentator's series, labelled by route template only."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.errors import send_problem
from app.middleware.metrics import HttpMetricsMiddleware
from app.telemetry.metrics import LATENCY_BUCKETS
from app.telemetry.tally import Tallies


class Series:
    """A registry and its tallies, read as /metrics reads them: the tallies flushed first."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tallies = Tallies()


def instrumented(refuse: bool = False) -> tuple[Any, Series]:
    app = FastAPI()

    @app.post("/items/{item}")
    async def item(request: Request, item: str) -> Response:
        return JSONResponse({"item": item})

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok")

    async def refusing(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = app  # as Starlette sets it before its middleware runs
        if refuse:  # like the auth layer: answered before any route runs
            await send_problem(send, scope, "unauthorized", "no key")
            return
        await app(scope, receive, send)

    series = Series()
    middleware = HttpMetricsMiddleware(
        refusing,
        registry=series.registry,
        tallies=series.tallies,
        buckets=LATENCY_BUCKETS,
        handlers=frozenset({"/items/{item}", "/healthz"}),
        excluded_paths=frozenset({"/healthz"}),
    )
    return middleware, series


def send(asgi: Any, method: str, path: str, **options: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **options)

    return asyncio.run(go())


def exposition(series: Series) -> str:
    series.tallies.flush()
    return generate_latest(series.registry).decode()


def test_requests_are_counted_by_route_template_method_and_status_class() -> None:
    asgi, registry = instrumented()
    for i in range(3):
        assert send(asgi, "POST", f"/items/{i}", content=b"12345").status_code == 200
    text = exposition(registry)
    assert 'http_requests_total{handler="/items/{item}",method="POST",status="2xx"} 3.0' in text
    assert 'http_request_size_bytes_sum{handler="/items/{item}"} 15.0' in text
    assert (
        'http_request_duration_seconds_bucket{handler="/items/{item}",le="0.5",method="POST"} 3.0'
        in text
    )
    assert "http_request_duration_highr_seconds_count 3.0" in text
    assert "/items/0" not in text and "/items/1" not in text


def test_excluded_paths_and_unrouted_paths_are_not_recorded() -> None:
    asgi, registry = instrumented()
    send(asgi, "GET", "/healthz")
    send(asgi, "GET", "/no/such/route")
    assert "http_requests_total{" not in exposition(registry)


def test_requests_refused_before_routing_are_counted_under_their_route() -> None:
    asgi, registry = instrumented(refuse=True)
    assert send(asgi, "POST", "/items/7").status_code == 401
    text = exposition(registry)
    assert 'http_requests_total{handler="/items/{item}",method="POST",status="4xx"} 1.0' in text


def test_an_unknown_method_is_counted_as_other() -> None:
    asgi, registry = instrumented(refuse=True)
    send(asgi, "BREW", "/items/7")
    assert 'method="other"' in exposition(registry)
    assert "BREW" not in exposition(registry)


def test_a_path_one_slash_off_a_route_refused_before_routing_makes_no_series() -> None:
    # The instrumentator's resolution names such a path itself (FastAPI would redirect it):
    # one new series per path a client without a key makes up.
    asgi, registry = instrumented(refuse=True)
    for i in range(3):
        assert send(asgi, "POST", f"/items/made-up-{i}/").status_code == 401
    text = exposition(registry)
    assert "made-up" not in text
    assert "http_requests_total{" not in text


def test_a_content_length_of_thousands_of_leading_zeros_is_counted_not_raised() -> None:
    """httptools accepts `Content-Length: 000...05`; int() refuses past 4,300 digits, and the
    error escaped after the answer: an error traceback logged, the request not counted."""
    asgi, registry = instrumented(refuse=True)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"12345", "more_body": False}

    async def collect(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/items/1",
        "headers": [(b"content-length", b"0" * 5000 + b"5")],
        "query_string": b"",
        "route": type("Route", (), {"path": "/items/{item}"})(),
    }
    asyncio.run(asgi(scope, receive, collect))
    assert sent[0]["status"] == 401
    text = exposition(registry)
    assert 'http_requests_total{handler="/items/{item}",method="POST",status="4xx"} 1.0' in text
    assert 'http_request_size_bytes_sum{handler="/items/{item}"} 5.0' in text
