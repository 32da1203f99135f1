"""The HTTP connection: uvicorn's httptools protocol, with two bounds it does not have.

- The request head (request line and headers) is limited: httptools accepts any size and
  joins a header value by copying it whole for every piece that arrives, so one 200 MB header
  held the event loop for minutes. Past `max_head_bytes` the request is answered 431 and the
  connection closed, before the app sees it.
- A response the client does not read is limited in time: uvicorn waits for the socket to drain
  with no deadline, so clients that send requests and never read the answers held their
  concurrency slots for good. When writing has been paused (the client's window and the
  transport's buffer full) for `write_stall_s`, the connection is aborted: the request ends as
  a disconnect and its slot is free again.

A client that goes away is noticed: the app hands `on_client_gone` a function for a request,
and when the connection is lost (or aborted for a stalled write) before that request is
answered, it is called (at once, if the client had gone before the app asked). The batcher
uses it to drop a queued request, so that a client that gave up costs no forward pass.

`frameworm serve` runs uvicorn with this protocol; plain `uvicorn app.main:create_app` does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, cast

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.errors import PROBLEM_CONTENT_TYPE, problem_body

log = logging.getLogger("frameworm.connection")

ON_CLIENT_GONE = "frameworm.on_client_gone"
_GONE = object()  # in place of the function once the client has gone


def on_client_gone(scope: MutableMapping[str, Any], call: Callable[[], None]) -> None:
    """Have `call` called when the request's client goes away: at once if it already has.

    Call `forget_client_gone` once the answer is there: uvicorn keeps a keep-alive
    connection's last scope until its next request, and `call` may hold on to the answer.
    """
    if scope.get(ON_CLIENT_GONE) is _GONE:
        call()
    else:
        scope[ON_CLIENT_GONE] = call


def forget_client_gone(scope: MutableMapping[str, Any]) -> None:
    if scope.get(ON_CLIENT_GONE) is not _GONE:
        scope.pop(ON_CLIENT_GONE, None)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # Set per server by `bounded_protocol`; these defaults are the settings' defaults.
    max_head_bytes = 64 * 1024
    write_stall_s = 30.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._head_bytes = 0  # of the chunks received wholly inside the open request head
        self._chunk_bytes = 0  # of the chunk being parsed
        self._open: deque[RequestResponseCycle] = deque()  # requests not yet answered
        self._stall: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ request head
    def data_received(self, data: bytes) -> None:
        # Where the connection is (a head, a body) is read from uvicorn's own state, before
        # and after parsing: no override of the parser's per-header callbacks.
        cycle = self.cycle
        in_head = cycle is None or not cycle.more_body  # before this chunk: not in a body
        self._chunk_bytes = len(data)
        super().data_received(data)
        if self.cycle is not cycle:  # a head completed in this chunk: a new request
            self._head_bytes = 0
        elif in_head:  # and no head completed: the whole chunk was head
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
                self._refuse_head()

    def _unsupported_upgrade_warning(self) -> None:
        # Serving no WebSockets (ws="none") is deliberate: an upgrade request is plain HTTP.
        # uvicorn would log two warnings per such request, one of them wrong.
        log.debug("an upgrade request served as plain HTTP", extra=self._who())

    def on_headers_complete(self) -> None:
        # A head that ends in the chunk it started in (up to uvloop's 256 KB read) never
        # counted above. Measured here, only when this chunk could have carried it past the
        # limit; such a request is answered by `_refuse_whole_head` instead of the app.
        if self._head_bytes + self._chunk_bytes > self.max_head_bytes and self._head_size() > (
            self.max_head_bytes
        ):
            app, self.app = self.app, self._refuse_whole_head
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        # Every request still to answer, pipelined ones included: uvicorn keeps only the newest.
        self._open.append(self.cycle)
        while self._open[0].response_complete:
            self._open.popleft()

    def _head_size(self) -> int:
        """The parsed head's size: request line and header lines (less optional whitespace)."""
        line = len(self.parser.get_method()) + 1 + len(self.url) + len(" HTTP/1.1\r\n")
        return line + sum(len(name) + len(value) + 4 for name, value in self.headers) + 2

    def _refuse_head(self) -> None:
        """A head still arriving, over the limit: answered 431 at once, the connection closed."""
        log.warning(
            "a request head over %d bytes; answered 431", self.max_head_bytes, extra=self._who()
        )
        if self.cycle is None or self.cycle.response_complete:  # not in a pipelined response
            body = self._too_large_body()
            head = [
                b"HTTP/1.1 431 Request Header Fields Too Large",
                b"content-type: " + PROBLEM_CONTENT_TYPE.encode(),
                b"content-length: " + str(len(body)).encode(),
                b"connection: close",
            ]
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()

    async def _refuse_whole_head(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A head that arrived whole, over the limit: answered 431 in its turn, then closed."""
        log.warning(
            "a request head over %d bytes; answered 431", self.max_head_bytes, extra=self._who()
        )
        body = self._too_large_body()
        headers = [
            (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _too_large_body(self) -> bytes:
        return problem_body(
            "headers-too-large",
            f"the request line and headers are over {self.max_head_bytes // 1024} KB",
            None,
        )

    # ------------------------------------------------------------------ stalled writes
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.write_stall_s, self._abort_stalled_write)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_stall()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall()
        self._clients_gone()
        super().connection_lost(exc)

    def _clients_gone(self) -> None:
        """Tell each request not yet answered that its client is gone (ON_CLIENT_GONE)."""
        for cycle in self._open:
            if cycle.response_complete:
                continue
            scope = cast(MutableMapping[str, Any], cycle.scope)
            gone, scope[ON_CLIENT_GONE] = scope.get(ON_CLIENT_GONE), _GONE
            if callable(gone):
                gone()

    def _abort_stalled_write(self) -> None:
        self._stall = None
        stalled = self.write_stall_s
        log.warning("a client read nothing for %.0fs; aborted", stalled, extra=self._who())
        # As connection_lost will, but for every request still open, and now: uvloop resumes
        # writing as it drops the buffer, and a waiting response must find its client gone
        # rather than write to a closed transport (uvloop raises; uvicorn marks only the newest
        # request of a pipeline as disconnected).
        for cycle in self._open:
            cycle.disconnected = True
            cycle.message_event.set()
        self._clients_gone()
        self.transport.abort()  # close() would wait to flush what the client is not reading

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _who(self) -> dict[str, str | None]:
        return {"client": f"{self.client[0]}:{self.client[1]}" if self.client else None}


def bounded_protocol(max_head_bytes: int, write_stall_s: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for one server's settings (uvicorn instantiates it per connection)."""
    attributes = {"max_head_bytes": max_head_bytes, "write_stall_s": write_stall_s}
    return type("FramewormHttpProtocol", (BoundedHttpToolsProtocol,), attributes)
