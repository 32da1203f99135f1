"""Request context: request id, security headers, timing and one access-log line per request."""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.client_gone import connection_refusal, read_ahead
from app.errors import PROBLEMS, incoming_request_id
from app.telemetry.logs import log_fields
from app.telemetry.tracing import (
    CALLER_TRACE_ID,
    current_trace_ids,
    is_traced,
    name_span_by_route,
)

access_log = logging.getLogger("frameworm.access")

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
]
# Swagger UI at /docs (served only with FRAMEWORM_ENABLE_DOCS=true) is the one page here a
# browser renders, and under `default-src 'none'` it stays blank: FastAPI's page loads Swagger
# UI's script and stylesheet from cdn.jsdelivr.net, starts it with an inline script and shows
# a favicon from fastapi.tiangolo.com; Swagger UI then sets inline styles, draws data: icons
# and fetches /openapi.json (and sends "Try it out" requests) to this origin. So that page, and
# no other response, gets a policy allowing just that. 'unsafe-inline' is needed because the
# inline script has no nonce (and its hash would change with the title, the URL and FastAPI's
# version); the page shows nothing taken from the request. Framing stays refused.
DOCS_CSP = (
    b"default-src 'none'; script-src https://cdn.jsdelivr.net 'unsafe-inline'; "
    b"style-src https://cdn.jsdelivr.net 'unsafe-inline'; "
    b"img-src https://fastapi.tiangolo.com data:; connect-src 'self'; frame-ancestors 'none'"
)
DOCS_SECURITY_HEADERS = [
    (name, DOCS_CSP if name == b"content-security-policy" else value)
    for name, value in SECURITY_HEADERS
]
_REPLACED = {name for name, _ in SECURITY_HEADERS} | {b"server", b"x-request-id"}
# scope["state"] key: headers inner layers add to whatever response the request gets.
RESPONSE_HEADERS = "response_headers"


def add_response_headers(scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
    """Headers for this request's response, whichever layer or route answers it.

    The context layer already rebuilds the response's headers (security headers, request id);
    a layer further in that only adds headers (the rate limit's) hands them over here instead of
    wrapping `send` for every request itself.
    """
    scope.setdefault("state", {}).setdefault(RESPONSE_HEADERS, []).extend(headers)


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        quiet_paths: frozenset[str] = frozenset(),
        draining: Callable[[], bool] | None = None,
    ) -> None:
        self.app = app
        self.quiet_paths = quiet_paths  # probes and /metrics: not access-logged at info
        # Once the drain has begun, each answer closes its connection: a kept-alive one would
        # be closed with the listener, racing the client's next request on it (a POST that
        # meets a reset is lost; clients do not resend it).
        self.draining = draining
        # Request ids: 32 hex digits, a random per-process prefix and a counter. Unique, and
        # cheaper than a uuid4 (an os.urandom call) per request; they are ids, not secrets.
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)

    def _new_id(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        # One the connection gave a request it refused before the app ran (client_gone.py).
        request_id = state.get("request_id") or incoming_request_id(scope) or self._new_id()
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                # The route is known now, and the server span still open (it ends with the body).
                name_span_by_route(scope)
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k not in _REPLACED]
                headers += DOCS_SECURITY_HEADERS if _is_docs(scope) else SECURITY_HEADERS
                headers.append((b"x-request-id", request_id.encode()))
                headers += state.get(RESPONSE_HEADERS, ())
                # Only on the last request read: one pipelined behind it would be dropped.
                if self.draining is not None and self.draining() and not read_ahead(scope):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            # The connection may have answered it itself (its body's framing), and closed: the
            # app then saw its client gone, or answered without reading the body, to nobody.
            refused = connection_refusal(scope)
            if refused is not None:
                status, response_started = PROBLEMS[refused[0]].status, True
            self._log(scope, request_id, status if response_started else 500, started)

    def _log(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        path = scope.get("path", "")
        # Probes and scrapes are frequent (and 503 while starting or draining, by design).
        level = logging.DEBUG if path in self.quiet_paths else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        state: dict[str, Any] = scope.get("state", {})
        route = scope.get("route")
        principal = state.get("principal")
        if is_traced(scope):
            trace_id, span_id = current_trace_ids()
        else:
            trace_id, span_id = state.get(CALLER_TRACE_ID), None
        log_fields(
            access_log,
            level,
            "request",
            {
                "request_id": request_id,
                "method": scope.get("method"),
                "route": getattr(route, "path", None),
                # Refused before routing (auth, limits) or no such route: the path says where.
                "path": None if route is not None else path[:256],
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "principal": getattr(principal, "key_id", None),
                "owner": getattr(principal, "owner", None),
                "model": state.get("served_model"),
                "version": state.get("served_version"),
                "trace_id": trace_id,
                "span_id": span_id,
            },
        )


def _is_docs(scope: Scope) -> bool:
    """The docs page: its path, on an app that serves docs (FastAPI's docs_url is None when
    they are off; Starlette puts the app in the scope before any middleware runs)."""
    return scope["path"] == "/docs" and getattr(scope.get("app"), "docs_url", None) == "/docs"
