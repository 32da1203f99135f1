"""Resource limits before any route runs: concurrency cap, body size, body receive deadline.

The body cap is enforced while streaming: a Content-Length over the cap is refused before a
byte is read, and a chunked body is counted as it arrives and refused the moment it passes the
cap, so no oversized body is ever buffered whole.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import retry_after, send_problem


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class RequestLimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        max_concurrency: int,
        exempt_paths: frozenset[str] = frozenset(),
    ) -> None:
        if max_body_bytes < 1 or body_timeout_s <= 0 or max_concurrency < 1:
            raise ValueError("limits must be positive")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_concurrency = max_concurrency
        self.exempt_paths = exempt_paths  # probes: never refused for load
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await self._too_large(send, scope)
            return
        if self.active >= self.max_concurrency:
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
        response_started = False
        received = 0
        deadline = time.monotonic() + self.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                raise _BodyTooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._too_large(send, scope)
        except _BodyTooSlow:
            if not response_started:
                await send_problem(
                    send, scope, "request-timeout", "the request body arrived too slowly"
                )

    async def _too_large(self, send: Send, scope: Scope) -> None:
        limit_mb = self.max_body_bytes / (1024 * 1024)
        await send_problem(
            send, scope, "payload-too-large", f"the body is larger than {limit_mb:g} MB"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
