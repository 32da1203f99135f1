"""The HTTP connection: uvicorn's httptools protocol, with the bounds it does not have.

- The request head (request line and headers) is limited: httptools accepts any size and
  joins a header value by copying it whole for every piece that arrives, so one 200 MB header
  held the event loop for minutes. Past `max_head_bytes` the request is answered 431 and the
  connection closed, before the app sees it.
- A response the client does not read is limited in time: uvicorn waits for the socket to drain
  with no deadline (clients that never read held their concurrency slots for good). Writing
  paused (the client's window and the transport's buffer full) for `write_stall_s`, or at the
  drain's deadline, aborts the connection: the request ends as a disconnect, its slot free.
- Waiting is limited in time (connection_waits.py): for a request, for a head to end, for a
  body answered early to end. The body has its own deadline in the app
  (RequestLimitsMiddleware); a chunked body's framing is bounded (chunked_body.py).
- An upgrade request (`Upgrade` with `Connection: upgrade`, or CONNECT) is the connection's
  last: httptools skips its body and parses what follows as new requests, so a body holding a
  request smuggled it past a proxy that forwards upgrades. One with a body is refused (400);
  one without is served as plain HTTP (no WebSockets here) and the connection closes after.

Errors of the protocol itself (a request httptools cannot parse, a head over the limit, a head
too slow) are problem responses like the app's, with its security headers, and close the
connection: in their turn, after the answers to requests pipelined before them.

A client that goes away is noticed: the app hands `on_client_gone` a function for a request,
and when the connection is lost (or aborted for a stalled write) before that request is
answered, it is called (at once, if the client had gone before the app asked). The batcher
uses it to drop a queued request, so that a client that gave up costs no forward pass.
A half-close (the client's FIN) counts as gone, as in nginx and Go: it cannot be told apart.

`frameworm serve` runs uvicorn with this protocol; plain `uvicorn app.main:create_app` does not.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import uuid
from collections import deque
from collections.abc import MutableMapping
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from app.chunked_body import MIN_MEAN_CHUNK_BYTES, ChunkedBodyBounds, Excess
from app.client_gone import GONE, ON_CLIENT_GONE, READ_AHEAD, refused_by_connection
from app.connection_refusals import head_refusal, is_v2_target, problem_bytes, refusing_app
from app.connection_waits import WaitingBounds
from app.errors import is_v2_path, problem_body
from app.read_ahead import FEED_BYTES, MAX_PIPELINED, HeldFlow

log = logging.getLogger("frameworm.connection")
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s


class BoundedHttpToolsProtocol(WaitingBounds):
    # Set per server by `bounded_protocol`; these defaults are the settings' defaults.
    max_head_bytes = 64 * 1024
    write_stall_s = 30.0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # of the chunks that carried the open request head (at least)
        self._head_slack = 0  # of those, the first chunk's bytes if it began mid-chunk
        self._chunk_bytes = 0  # of the chunk being parsed
        self._body_bytes = 0  # handed to on_body, all requests together
        self._bounds = ChunkedBodyBounds(self.max_head_bytes)  # the open body's framing
        self._unread = b""  # read, not parsed yet: the pipeline is full
        self._open: deque[RequestResponseCycle] = deque()  # requests not yet answered
        self._stall: asyncio.TimerHandle | None = None
        self._last_request_read = False  # an upgrade request: nothing after it is parsed
        # A problem (body, status, request id) to write once the requests before it are answered.
        self._refusal: tuple[bytes, int, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = HeldFlow(transport, lambda: bool(self._unread))

    # ------------------------------------------------------------------ request head
    def data_received(self, data: bytes) -> None:
        if self._refusal is not None or self._last_request_read:
            return  # after a refused or an upgrade request nothing is read: the connection closes
        if self._unread:  # bytes read earlier wait for the pipeline: these go after them
            self._unread += data
            self.flow.pause_reading()
            return
        while data:  # in pieces, reading ahead no further than MAX_PIPELINED requests
            if len(self.pipeline) >= MAX_PIPELINED:
                self._unread = data
                self.flow.pause_reading()  # resumed as the pipeline drains
                return
            piece, data = data[:FEED_BYTES], data[FEED_BYTES:]
            self._parse(piece)
            if self._refusal is not None or self._last_request_read or self.transport.is_closing():
                return

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._bounds.on_chunk()
        super().on_body(body)

    def _parse(self, data: bytes) -> None:
        # Where the connection is (a head, a body) is read from uvicorn's own state, before
        # and after parsing: no override of the parser's per-header callbacks.
        cycle = self.cycle
        in_head = cycle is None or not cycle.more_body  # before this chunk: not in a body
        self._chunk_bytes, body_before = len(data), self._body_bytes
        self._bounds.new_piece()
        super().data_received(data)
        if self.cycle is not cycle:  # a head completed in this chunk: a new request
            self._begin_head_count(data)
            self._refuse_body(self._bounds.after_calls(self._body_bytes - body_before))
        elif in_head:  # and no head completed: the whole chunk was head
            self._head_bytes += len(data)
            # The slack may be the previous message's: refused while arriving only when the
            # head alone is surely over; measured exactly once whole (on_headers_complete).
            over = self._head_bytes - self._head_slack > self.max_head_bytes
            if over and not self.transport.is_closing():
                self._refuse_head()
        else:  # in a body before the chunk (the chunk may end it): its framing (chunked_body)
            self._refuse_body(self._bounds.after_piece(len(data), self._body_bytes - body_before))
            self._begin_head_count(data)
        self._after_parse()

    def _begin_head_count(self, data: bytes) -> None:
        """A message ended in this chunk: a head begun after it is counted from the chunk's
        start, more than its bytes and never fewer (it went uncounted: a 78 KB head after a
        GET in one read passed a 64 KB limit)."""
        self._head_bytes = self._head_slack = len(data) if self._head_open else 0

    def _unsupported_upgrade_warning(self) -> None:
        # Serving no WebSockets (ws="none") is deliberate: an upgrade request is plain HTTP.
        # uvicorn would log two warnings per such request, one of them wrong.
        log.debug("an upgrade request served as plain HTTP", extra=self._who())

    def on_headers_complete(self) -> None:
        self._end_head()
        # A head that ends in the chunk it started in (up to uvloop's 256 KB read) never
        # counted above. Measured here, only when this chunk could have carried it past the
        # limit; such a request is answered by `refusing_app` instead of the app. So are a URL
        # that httptools cannot parse for its length and a query string over its limit.
        self._bounds.new_body()
        limit = self.max_head_bytes
        seen = self._head_bytes + self._chunk_bytes  # the head is no longer than this
        upgrade = self.parser.should_upgrade()
        method = self.parser.get_method()
        refusal = head_refusal(seen, method, self.url, self.headers, limit, upgrade=upgrade)
        if refusal is not None:
            status, code, detail = refusal
            v2 = is_v2_target(self.url)
            app, self.app = self.app, refusing_app(status, code, detail, v2, self._who)
            self.url = b"/"  # not needed to refuse it, and not parsed if over 64 KB
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        # The request's headers are complete: trailer fields after a chunked body would be
        # appended to the same list, which the app reads (an API key or a Content-Encoding
        # sent after the body was honoured). RFC 9110 6.5.1: they are not merged; dropped.
        self.headers = []
        self.cycle.scope[READ_AHEAD] = self._reads_ahead  # type: ignore[literal-required]
        if upgrade or self._last_head:
            self.cycle.keep_alive = False  # answered with `Connection: close`, then closed
        if upgrade:
            self._last_request_read = True  # its body is skipped: what follows is not parsed
        # Every request still to answer, pipelined ones included: uvicorn keeps only the newest.
        self._open.append(self.cycle)
        while self._open[0].response_complete:
            self._open.popleft()

    def _reads_ahead(self) -> bool:
        return bool(self.pipeline or self._unread)

    def _refuse_head(self) -> None:
        """A head still arriving, over the limit: answered 431 at once, the connection closed."""
        limit = self.max_head_bytes
        detail = f"the request line and headers are over {limit // 1024} KB"
        answered = self._close_with(431, "headers-too-large", detail)
        log.warning("a request head over %d bytes; answered 431", limit, extra=answered)

    def _refuse_body(self, excess: Excess | None) -> None:
        """Size lines and trailers over the head's limit (431), or too many tiny chunks (400)."""
        if excess is None or self.transport.is_closing():
            return
        if excess == "framing":
            kb = self.max_head_bytes // 1024
            detail = f"the chunked body's size lines and trailers are over {kb} KB"
            answered = self._close_with(431, "headers-too-large", detail)
        else:
            detail = f"the chunked body's chunks average under {MIN_MEAN_CHUNK_BYTES} bytes"
            answered = self._close_with(400, "malformed-request", detail)
        log.warning("a chunked body refused: %s", detail, extra=answered)

    # ------------------------------------------------------------------ protocol errors
    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to anything httptools cannot parse (a bad Content-Length, both it and
        # chunked, a bad chunk, a NUL or a folded header, an unknown method, HTTP/2's preface)
        # is text/plain: a problem, with no echo of what was sent. uvicorn has logged it; the
        # line here adds the request id the client was given.
        answered = self._close_with(400, "malformed-request", "the request is not valid HTTP/1.1")
        log.info("a request that is not valid HTTP/1.1; answered 400", extra=answered)

    def _close_with(self, status: int, code: str, detail: str) -> dict[str, str | None]:
        """Answer with a problem in its turn on the wire, and close.

        The request id, for the client to quote, is the app's when the app runs; returned
        with the client's address as the `extra` of the caller's log line. Requests that came
        before the refused one are answered first (pipelined): nothing more is read, and the
        problem is written once the last of them is (`on_response_complete`).
        """
        who = self._who()
        # An error in the body of the newest request answers that request (its app runs: one
        # request id, and this status in its log); one in a new head answers a request after
        # every one already open.
        newest = self.cycle
        in_body = newest if newest and newest.more_body and not self._head_open else None
        v2 = is_v2_path(in_body.scope["path"]) if in_body else is_v2_target(self.url)
        if in_body is not None and self._drop_pipelined(in_body):
            in_body = None  # its app never ran: refused in its turn, like a head
        if in_body is not None and in_body.response_complete:
            self.transport.close()  # answered already (a 401 while its body came): no second
            return who
        scope = cast(MutableMapping[str, Any], in_body.scope) if in_body else None
        who["request_id"] = request_id = (
            uuid.uuid4().hex if scope is None else refused_by_connection(scope, code, detail)
        )
        unanswered = [cycle for cycle in self._open if not cycle.response_complete]
        if unanswered and in_body is None:
            self._refusal = problem_body(code, detail, request_id, v2=v2), status, request_id
            self._end_head()
            self.flow.pause_reading()
            return who
        # In a body, the only request open is the one whose body failed (uvicorn runs one app
        # at a time): answered with the problem unless its own answer has begun.
        if not any(cycle.response_started for cycle in unanswered):
            self._write_problem(problem_body(code, detail, request_id, v2=v2), status, request_id)
        for cycle in unanswered:  # their answers can no longer be written
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
        return who

    def _drop_pipelined(self, cycle: RequestResponseCycle | None) -> bool:
        """Take a request whose app has not started out of uvicorn's pipeline."""
        for entry in self.pipeline:
            if entry[0] is cycle:
                self.pipeline.remove(entry)
                self._open.remove(cycle)
                return True
        return False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None and all(cycle.response_complete for cycle in self._open):
            body, status, request_id = self._refusal
            self._refusal = None
            if not self.transport.is_closing():  # not closed by a `Connection: close` answer
                self._write_problem(body, status, request_id)
            self.transport.close()
        if self.transport.is_closing():
            return
        if self._unread and len(self.pipeline) < MAX_PIPELINED:
            data, self._unread = self._unread, b""
            self.data_received(data)
        if self.transport.is_closing():
            return
        if self.pipeline or self._unread:
            # uvicorn resumes reading after every answer: with requests still read ahead, the
            # next read would only add to them.
            self.flow.pause_reading()
        else:
            self.flow.resume_reading()  # held back while bytes were unread (HeldFlow)

    def _write_problem(self, body: bytes, status: int, request_id: str) -> None:
        default = self.server_state.default_headers
        self.transport.write(problem_bytes(body, status, request_id, default))

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
        self._unset_keepalive_if_required()  # uvicorn does only on a clean close
        self._clients_gone()
        super().connection_lost(exc)

    def _clients_gone(self) -> None:
        """Tell each request not yet answered that its client is gone (ON_CLIENT_GONE), and
        mark it disconnected: uvicorn marks only the newest request of a pipeline, and an older
        one still running would write its answer to the closed transport (uvloop raises: a
        traceback in the log for each)."""
        for cycle in self._open:
            if cycle.response_complete:
                continue
            cycle.disconnected = True
            cycle.message_event.set()
            scope = cast(MutableMapping[str, Any], cycle.scope)
            gone, scope[ON_CLIENT_GONE] = scope.get(ON_CLIENT_GONE), GONE
            if callable(gone):
                gone()

    def _abort_stalled_write(self, why: str = "") -> None:
        self._cancel_stall()
        why = why or f"for {self.write_stall_s:.0f}s"
        log.warning("a client read nothing %s; aborted", why, extra=self._who())
        # As connection_lost will, but now: uvloop resumes writing as it drops the buffer, and a
        # waiting response must find its client gone rather than write to a closed transport.
        self._clients_gone()
        # A reset, the unread answers dropped: the socket closed with a lingering send queue
        # (a client that had no request left unread) kept MBs in the kernel, sent on for as
        # long as the client would take them (FIN-WAIT-1).
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        self.transport.abort()  # close() would wait to flush what the client is not reading

    def abort_if_stalled(self) -> bool:
        """At the drain's deadline: cut off an answer still waiting for its client to read."""
        stalled = self._stall is not None
        if stalled:
            self._abort_stalled_write("by the shutdown deadline")
        return stalled

    def refuse_open_head(self) -> bool:
        """At the drain's deadline: a request head still arriving is answered 503."""
        if not self._head_open or self.transport.is_closing():
            return False
        self._close_with(503, "shutting-down", "the server is shutting down")
        return True

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None


def bounded_protocol(
    max_head_bytes: int, write_stall_s: float, header_timeout_s: float = 10.0
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for one server's settings (uvicorn instantiates it per connection)."""
    attributes = {
        "max_head_bytes": max_head_bytes,
        "write_stall_s": write_stall_s,
        "header_timeout_s": header_timeout_s,
    }
    return type("FramewormHttpProtocol", (BoundedHttpToolsProtocol,), attributes)
