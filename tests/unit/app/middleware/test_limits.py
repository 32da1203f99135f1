"""RequestLimitsMiddleware on tiny inline ASGI apps: body cap, body deadline, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import install_error_handlers
from app.middleware.limits import RequestLimitsMiddleware

LIMIT = 1024


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, then answers its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await JSONResponse({"size": size})(scope, receive, send)


def limited(app: ASGIApp, **options: float) -> RequestLimitsMiddleware:
    settings = {"max_body_bytes": LIMIT, "body_timeout_s": 0.2, "max_concurrency": 2, **options}
    return RequestLimitsMiddleware(
        app,
        max_body_bytes=int(settings["max_body_bytes"]),
        body_timeout_s=settings["body_timeout_s"],
        max_concurrency=int(settings["max_concurrency"]),
    )


def fastapi_reading_the_body() -> FastAPI:
    """Like the real app: routes behind Starlette's error layer with a catch-all handler."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/infer")
    async def infer(request: Request) -> Response:
        return JSONResponse({"size": len(await request.body())})

    return app


async def call(
    app: ASGIApp,
    chunks: list[bytes],
    *,
    content_length: int | None = None,
    pause_s: float = 0,
    path: str = "/infer",
) -> tuple[int, dict[str, str]]:
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    queue = list(chunks)
    sent: list[Message] = []

    async def receive() -> Message:
        if pause_s:
            await asyncio.sleep(pause_s)
        body = queue.pop(0) if queue else b""
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


def run(coroutine: Awaitable[tuple[int, dict[str, str]]]) -> tuple[int, dict[str, str]]:
    async def main() -> tuple[int, dict[str, str]]:
        return await coroutine

    return asyncio.run(main())


def test_a_declared_length_over_the_cap_is_413_before_the_app_runs() -> None:
    called = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal called
        called = True

    status, headers = run(call(limited(app), [], content_length=LIMIT + 1))
    assert (status, called) == (413, False)
    assert headers["content-type"] == "application/problem+json"


def test_a_streamed_body_over_the_cap_is_413_on_a_plain_asgi_app() -> None:
    assert run(call(limited(echo_length), [b"x" * 600, b"x" * 600]))[0] == 413


def test_a_body_within_the_cap_reaches_the_app() -> None:
    assert run(call(limited(echo_length), [b"x" * 600, b"x" * 400]))[0] == 200


def test_a_slow_body_is_408_on_a_plain_asgi_app() -> None:
    assert run(call(limited(echo_length), [b"x", b"x"], pause_s=0.5))[0] == 408


Scenario = Callable[[ASGIApp], Awaitable[tuple[int, dict[str, str]]]]


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (lambda app: call(app, [b"x" * 600, b"x" * 600]), 413),
        (lambda app: call(app, [b"x", b"x"], pause_s=0.5), 408),
    ],
    ids=["too-large", "too-slow"],
)
def test_a_streamed_limit_is_answered_with_its_status_in_front_of_a_fastapi_app(
    scenario: Scenario, expected: int
) -> None:
    assert run(scenario(limited(fastapi_reading_the_body())))[0] == expected


def test_past_the_concurrency_cap_a_request_is_503_with_retry_after() -> None:
    release = asyncio.Event()

    async def held(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await JSONResponse({})(scope, receive, send)

    async def main() -> list[int]:
        app = limited(held, max_concurrency=2)
        first = asyncio.create_task(call(app, [b"{}"]))
        second = asyncio.create_task(call(app, [b"{}"]))
        await asyncio.sleep(0.01)
        third, headers = await call(app, [b"{}"])
        assert int(headers["retry-after"]) >= 1
        release.set()
        return [(await first)[0], (await second)[0], third]

    assert asyncio.run(main()) == [200, 200, 503]


def test_non_positive_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        limited(echo_length, max_concurrency=0)


def test_at_the_shutdown_deadline_every_request_not_yet_answering_gets_503() -> None:
    """One waits for its body, one is busy in the app: both are answered 503 at once, and
    what the busy app sends afterwards is dropped. One already answering is left alone."""
    busy, answering = asyncio.Event(), asyncio.Event()
    deadline_hooks: list[Callable[[], Awaitable[int]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/answering":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            answering.set()
            await asyncio.sleep(0.2)
            await send({"type": "http.response.body", "body": b"done"})
        elif scope["path"] == "/busy":
            await receive()
            busy.set()
            await asyncio.sleep(0.2)  # decoding, say
            await JSONResponse({"late": True})(scope, receive, send)
        else:
            await echo_length(scope, receive, send)

    async def main() -> list[int]:
        limits = RequestLimitsMiddleware(
            app,
            max_body_bytes=LIMIT,
            body_timeout_s=30,
            max_concurrency=8,
            at_shutdown_deadline=deadline_hooks,
        )
        slow_body = asyncio.create_task(call(limits, [b"{", b"}"], pause_s=10))
        in_app = asyncio.create_task(call(limits, [b"{}"], path="/busy"))
        started = asyncio.create_task(call(limits, [b"{}"], path="/answering"))
        await asyncio.wait_for(busy.wait(), 5)
        await asyncio.wait_for(answering.wait(), 5)
        assert [await hook() for hook in deadline_hooks] == [2]
        results = await asyncio.wait_for(asyncio.gather(slow_body, in_app, started), 5)
        return [status for status, _ in results]

    assert asyncio.run(main()) == [503, 503, 200]
