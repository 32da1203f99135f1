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

`frameworm serve` runs uvicorn with this protocol; plain `uvicorn app.main:create_app` does not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import PROBLEM_CONTENT_TYPE, problem_body

log = logging.getLogger("frameworm.connection")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    # Set per server by `bounded_protocol`; these defaults are the settings' defaults.
    max_head_bytes = 64 * 1024
    write_stall_s = 30.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._in_head = True  # between requests, or inside a request's head
        self._head_bytes = 0  # of the chunks received wholly inside the open head
        self._boundaries = 0  # heads completed or messages ended in the chunk being parsed
        self._stall: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(cast(asyncio.Transport, _WritesUntilClosed(transport)))

    # ------------------------------------------------------------------ request head
    def data_received(self, data: bytes) -> None:
        # Counted after parsing, so a chunk that ends a head (or a body and starts a head) never
        # counts: the limit holds to within one chunk, and never refuses a body's bytes.
        counting, self._boundaries = self._in_head, 0
        super().data_received(data)
        if not (counting and self._in_head and self._boundaries == 0):
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        self._boundaries += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._boundaries += 1
        super().on_message_complete()

    def _refuse_head(self) -> None:
        limit = self.max_head_bytes
        log.warning("a request head over %d bytes; answered 431", limit, extra=self._who())
        if self.cycle is None or self.cycle.response_complete:  # not in a pipelined response
            body = problem_body(
                "headers-too-large",
                f"the request line and headers are over {limit // 1024} KB",
                None,
            )
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                + b"content-type: "
                + PROBLEM_CONTENT_TYPE.encode()
                + b"\r\n"
                + b"content-length: "
                + str(len(body)).encode()
                + b"\r\n"
                + b"connection: close\r\n\r\n"
                + body
            )
        self.transport.close()

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
        super().connection_lost(exc)

    def _abort_stalled_write(self) -> None:
        self._stall = None
        stalled = self.write_stall_s
        log.warning("a client read nothing for %.0fs; aborted", stalled, extra=self._who())
        self.transport.abort()  # close() would wait to flush what the client is not reading

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _who(self) -> dict[str, str | None]:
        return {"client": f"{self.client[0]}:{self.client[1]}" if self.client else None}


class _WritesUntilClosed:
    """The connection's transport, whose writes after it closed are dropped.

    uvloop raises on a write to a closed transport (asyncio's transports drop it). On an
    aborted connection uvloop resumes writing as it drops the buffer, so a response that was
    waiting to write goes on before the connection's loss reaches the request (and with
    pipelined requests, uvicorn marks only the newest one as disconnected).
    """

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def bounded_protocol(max_head_bytes: int, write_stall_s: float) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for one server's settings (uvicorn instantiates it per connection)."""
    attributes = {"max_head_bytes": max_head_bytes, "write_stall_s": write_stall_s}
    return type("FramewormHttpProtocol", (BoundedHttpToolsProtocol,), attributes)
