"""How long a connection may wait, on uvicorn's httptools protocol: the base of connection.py.

uvicorn arms its keep-alive timer only after a response and drops it at the first byte of the
next request, so a connection that sent nothing, or half a head, stayed open for good
(slowloris). Here:

- A connection waiting for a request (new, or after a response) closes `timeout_keep_alive`
  after the wait began. Bytes that open no head (the blank lines HTTP lets precede a request)
  do not move that deadline: two bytes every few seconds held a connection open for good.
- A head, once begun, must be whole within `header_timeout_s`; the subclass answers 408.
- The rest of a body whose request was answered early (a 401, a 413) is read and thrown away
  for at most `header_timeout_s`, as nginx's lingering close does, so the client reads its
  answer; then the connection closes.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("frameworm.connection")


class WaitingBounds(HttpToolsProtocol):
    header_timeout_s = 10.0  # set per server by connection.bounded_protocol

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._head_open = False  # a request head has begun and not ended
        self._head_timer: asyncio.TimerHandle | None = None
        self._discard_timer: asyncio.TimerHandle | None = None
        self._waited_until = 0.0  # when the connection's wait for a request must end
        self._last_head = False  # the listener closed while this head arrived: the last request

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's keep-alive timer, armed for a new connection too: the first byte drops it.
        self._wait_for_a_request()

    def _wait_for_a_request(self) -> None:
        self._waited_until = self.loop.time() + self.timeout_keep_alive
        self.timeout_keep_alive_task = self.loop.call_at(
            self._waited_until, self.timeout_keep_alive_handler
        )

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = None
        # A head that began before the timer was armed (pipelined) has its own deadline.
        if not self._head_open and not self.transport.is_closing():
            wait = self.timeout_keep_alive
            log.debug("no request for %gs; connection closed", wait, extra=self._who())
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True  # the head timer is armed after the chunk, if the head is open

    def on_message_complete(self) -> None:
        # uvicorn leaves `more_body` set on a request answered before its body ended (a 401, a
        # 413): the connection would count as in a body for good, its next heads unmeasured.
        if self.cycle is not None and self.cycle.response_complete:
            self.cycle.more_body = False
            # A body thrown away has ended: the wait for the next request begins now, not at
            # the early answer (a body longer than the keep-alive closed the connection at
            # once, under a client about to reuse it).
            self._waited_until = self.loop.time() + self.timeout_keep_alive
        # A body being thrown away has ended, whatever follows it in the same read.
        self._cancel_discard()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn armed it: a wait begins
            self._waited_until = self.timeout_keep_alive_task.when()

    def _after_parse(self) -> None:
        """A piece was parsed: a head still open must end in time; otherwise no request is
        under way and the wait for one keeps its deadline (uvicorn drops its timer at any
        byte, and arms it again only after an answer)."""
        if self._head_open:
            if self._head_timer is None and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)
            return
        cycle = self.cycle
        if self.transport.is_closing() or (cycle is not None and not cycle.response_complete):
            return  # the app is at work on a request, under its own deadlines
        if cycle is not None and cycle.more_body:
            # Answered early, its body still coming and thrown away: for at most the header
            # timeout from its first byte after the answer.
            if self._discard_timer is None:
                self._discard_timer = self.loop.call_later(
                    self.header_timeout_s, self._discard_timed_out
                )
            return
        if self.timeout_keep_alive_task is None and not self.pipeline:
            self.timeout_keep_alive_task = self.loop.call_at(
                self._waited_until, self.timeout_keep_alive_handler
            )

    def _discard_timed_out(self) -> None:
        self._discard_timer = None
        if not self.transport.is_closing():
            limit = self.header_timeout_s
            log.info("an answered request's body not over in %gs; closed", limit, extra=self._who())
            self.transport.close()

    def _cancel_discard(self) -> None:
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # pipelined requests wait: the server is not reading, for now
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)
            return
        limit = self.header_timeout_s
        answered = self._close_with(
            408, "request-timeout", f"the request head took over {limit:g} s"
        )
        log.info("a request head not whole in %gs; answered 408", limit, extra=answered)

    def _end_head(self) -> None:
        self._head_open = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def shutdown(self) -> None:
        """The listener closed: uvicorn closes a connection between requests at once, which
        dropped one whose next head had begun to arrive, unanswered. That request is served
        (its head under the header timeout), as the connection's last."""
        if self._head_open and (self.cycle is None or self.cycle.response_complete):
            self._last_head = True
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        self._cancel_discard()
        super().connection_lost(exc)

    # Supplied by the connection (connection.py).
    def _close_with(self, status: int, code: str, detail: str) -> dict[str, str | None]:
        raise NotImplementedError

    def _who(self) -> dict[str, str | None]:
        return {"client": f"{self.client[0]}:{self.client[1]}" if self.client else None}
