"""Resource limits before any route runs: concurrency cap, body size, body receive deadline.

The body cap is enforced while streaming: a Content-Length over the cap is refused before a
byte is read, and a chunked body is counted as it arrives and refused the moment it passes the
cap, so no oversized body is ever buffered whole.

At the drain's shutdown deadline (`shed_open`), every request here whose response has not
started is answered 503 `shutting-down`, as the batcher answers what it still queues: a body
still arriving, or a request still being decoded, would otherwise run on until uvicorn cancels
it and answers a bare 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import retry_after, send_problem
from app.telemetry.metrics import Metrics


class RequestLimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        max_concurrency: int,
        exempt_paths: frozenset[str] = frozenset(),
        metrics: Metrics | None = None,
        at_shutdown_deadline: list[Callable[[], Awaitable[int]]] | None = None,
    ) -> None:
        if max_body_bytes < 1 or body_timeout_s <= 0 or max_concurrency < 1:
            raise ValueError("limits must be positive")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_concurrency = max_concurrency
        self.exempt_paths = exempt_paths  # probes: never refused for load
        self.metrics = metrics
        self.active = 0
        self.open: set[_LimitedRequest] = set()
        if at_shutdown_deadline is not None:
            at_shutdown_deadline.append(self.shed_open)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await self.too_large(send, scope)
            return
        if self.active >= self.max_concurrency:
            if self.metrics is not None:
                self.metrics.shed("concurrency")
            await send_problem(
                send, scope, "overloaded", "too many concurrent requests", retry_after(1)
            )
            return
        self.active += 1
        try:
            await self._call_limited(scope, receive, send)
        finally:
            self.active -= 1

    async def _call_limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        responder = _LimitedRequest(self, scope, receive, send)
        self.open.add(responder)
        try:
            await self.app(scope, responder.receive, responder.send)
        except Exception:
            # Once the limit has answered, the app's reaction to the cut-off body (it sees a
            # client disconnect) is of no interest: the client already has its 413 or 408.
            if not responder.answered:
                raise
        finally:
            self.open.discard(responder)

    async def shed_open(self) -> int:
        """The shutdown deadline: answer 503 to every open request not yet answering."""
        waiting = [r for r in self.open if not r.response_started and not r.answered]
        for responder in waiting:
            await responder.shed()
        return len(waiting)

    async def too_large(self, send: Send, scope: Scope) -> None:
        limit_mb = self.max_body_bytes / (1024 * 1024)
        await send_problem(
            send, scope, "payload-too-large", f"the body is larger than {limit_mb:g} MB"
        )


class _LimitedRequest:
    """One request's body accounting. When a limit is hit it answers at once (413 or 408),
    then tells the app the client went away and drops whatever the app still sends."""

    def __init__(
        self, limits: RequestLimitsMiddleware, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.limits = limits
        self.scope = scope
        self._receive = receive
        self._send = send
        self.received = 0
        # In the event loop's clock: asyncio.timeout_at needs no task per receive (wait_for does).
        self.deadline = asyncio.get_running_loop().time() + limits.body_timeout_s
        self.response_started = False
        self.answered = False
        self._receiving: asyncio.Timeout | None = None  # while waiting for the body
        self._shed = False

    async def receive(self) -> Message:
        if self.answered:
            return {"type": "http.disconnect"}
        try:
            async with asyncio.timeout_at(self.deadline) as self._receiving:
                message = await self._receive()
        except TimeoutError:
            if self._shed:
                await self._answer_shutting_down()
            else:
                await self._answer("request-timeout", "the request body arrived too slowly")
            return {"type": "http.disconnect"}
        finally:
            self._receiving = None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limits.max_body_bytes:
                await self._answer("payload-too-large", "")
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def shed(self) -> None:
        """Answered 503 now; a wait for the body ends as if its deadline had passed."""
        if self._receiving is not None:
            self._shed = True
            self._receiving.reschedule(asyncio.get_running_loop().time())  # receive answers
        else:
            await self._answer_shutting_down()

    async def _answer_shutting_down(self) -> None:
        await self._answer("shutting-down", "the server is shutting down")

    async def _answer(self, code: str, detail: str) -> None:
        if self.response_started:
            return  # too late for a status; the app's response stands
        self.answered = True
        if code == "payload-too-large":
            await self.limits.too_large(self._send, self.scope)
        elif code == "shutting-down":
            await send_problem(self._send, self.scope, code, detail, retry_after(1))
        else:
            await send_problem(self._send, self.scope, code, detail)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
