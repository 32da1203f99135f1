"""The connection's deadlines and its last request (app/connection_waits.py, app/connection.py),
driven with bytes and no socket (tests/support/connection.py): upgrade requests, blank lines
while idle, a body thrown away, a head that begins in the read that ended another message."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from app.client_gone import read_ahead
from app.middleware.context import RequestContextMiddleware
from tests.support.connection import REQUEST, Transport, protocol

SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def answer_ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def statuses(written: bytes) -> list[bytes]:
    return [line.split(b" ", 2)[1] for line in written.split(b"\r\n") if line.startswith(b"HTTP/")]


def test_an_upgrade_request_with_a_body_is_refused_and_its_body_never_parsed() -> None:
    """httptools skips an upgrade request's body and parses what follows as new requests: a
    request inside the body was answered 200 (smuggled past a proxy that forwards upgrades),
    after the app saw its request without a body."""

    async def run() -> Transport:
        transport = Transport()
        connection = protocol(transport)
        connection.data_received(
            b"POST /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: %d\r\n\r\n" % len(SMUGGLED)
        )
        await settle()
        connection.data_received(SMUGGLED)  # its body, in a later read
        await settle()
        return transport

    transport = asyncio.run(run())
    assert statuses(transport.written) == [b"400"], transport.written
    body = json.loads(transport.written.partition(b"\r\n\r\n")[2])
    assert body["detail"].startswith("an upgrade request cannot carry a body here: send it")
    assert b"connection: close" in transport.written.lower() and transport.closing


def test_an_upgrade_request_without_a_body_is_served_and_is_the_connection_s_last() -> None:
    """The bytes after it in the read were dropped without an answer, the connection left open."""

    async def run() -> Transport:
        transport = Transport()
        connection = protocol(transport)
        upgrade = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
        upgrade += b"Upgrade: websocket\r\n"
        connection.data_received(upgrade + b"\r\n" + REQUEST)
        await settle()
        connection.data_received(REQUEST)  # nothing after the upgrade request is read
        await settle()
        return transport

    transport = asyncio.run(run())
    assert statuses(transport.written) == [b"200"], transport.written
    assert b"connection: close" in transport.written.lower() and transport.closing


def test_blank_lines_do_not_hold_an_idle_connection_open() -> None:
    """Bytes that open no head (HTTP lets blank lines precede a request) pushed the keep-alive
    deadline back each time: two bytes a second held a connection for good."""

    async def run() -> float:
        transport = Transport()
        connection = protocol(transport, keep_alive_s=0.3)
        started = asyncio.get_running_loop().time()
        while not transport.closing:
            connection.data_received(b"\r\n")
            await asyncio.sleep(0.05)
            assert asyncio.get_running_loop().time() - started < 2, "never closed"
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(run()) < 1.0


def test_the_next_request_after_a_thrown_away_body_gets_its_own_deadlines() -> None:
    """The end of a body being thrown away and the next head in one read: the discard timer
    was left armed and closed the connection under the next request, its body in time."""

    async def run() -> Transport:
        transport = Transport()
        connection = protocol(transport, header_timeout_s=0.2)
        connection.data_received(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
        await settle()  # answered 401 before its body
        connection.data_received(b"01234")  # thrown away: the discard timer is armed
        await settle()
        next_head = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n"
        connection.data_received(b"56789" + next_head)
        await asyncio.sleep(0.4)  # past the header timeout; its body has 30 s
        connection.data_received(b"{}")
        await settle()
        return transport

    transport = asyncio.run(run())
    assert statuses(transport.written) == [b"401", b"200"], transport.written
    assert not transport.closing


def test_a_head_begun_in_the_read_that_ended_the_previous_request_is_measured_whole() -> None:
    """Its bytes in that read went uncounted: a 20 KB head begun after a GET, ending in the
    next 16 KB piece of the read, passed an 8 KB limit."""

    async def run(data: bytes) -> bytes:
        transport = Transport()
        connection = protocol(transport, max_head_kb=8)
        connection.data_received(data)
        await settle()
        return transport.written

    def get(pad: int) -> bytes:
        return b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * pad + b"\r\n\r\n"

    assert statuses(asyncio.run(run(REQUEST + get(20_000)))) == [b"200", b"431"]
    # Counted from the start of the piece it began in, more than its bytes: a head within the
    # limit that begins near the end of a piece is still served (measured exactly once whole).
    body = b"x" * (16 * 1024 - 2_000)
    post = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert statuses(asyncio.run(run(post + body + get(6_000)))) == [b"200", b"200"]


def test_after_a_thrown_away_body_the_connection_waits_a_whole_keep_alive() -> None:
    """The wait was measured from the early answer: a body longer in coming than the
    keep-alive closed the connection as it ended, under a client about to reuse it."""

    async def run() -> Transport:
        transport = Transport()
        connection = protocol(transport, keep_alive_s=0.3, header_timeout_s=2.0)
        connection.data_received(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n")
        await settle()  # answered 401 before its body
        for byte in b"012345":  # the body over 0.6 s, twice the keep-alive
            connection.data_received(bytes([byte]))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.1)
        assert not transport.closing, "closed as the body ended"
        connection.data_received(REQUEST)  # reused within a keep-alive of the body's end
        await settle()
        return transport

    transport = asyncio.run(run())
    assert statuses(transport.written) == [b"401", b"200"], transport.written
    assert not transport.closing


def test_a_head_arriving_when_the_listener_closes_is_served_as_the_last_request() -> None:
    """uvicorn's shutdown closed a connection between requests at once: one whose next head
    had begun was dropped without an answer, its client unable to tell whether it ran."""

    async def run() -> tuple[Transport, bool]:
        transport = Transport()
        connection = protocol(transport)
        connection.data_received(b"POST /healthz HTTP/1.1\r\nHost: t\r\n")
        await settle()
        connection.shutdown()  # the listener closes (the drain)
        kept = not transport.closing
        connection.data_received(b"Content-Length: 2\r\n\r\n{}")
        await settle()
        return transport, kept

    transport, kept = asyncio.run(run())
    assert kept, "closed under a head still arriving"
    assert statuses(transport.written) == [b"200"], transport.written
    assert b"connection: close" in transport.written.lower() and transport.closing


def test_a_head_still_arriving_at_the_drain_s_deadline_is_answered_503() -> None:
    async def run() -> tuple[Transport, bool]:
        transport = Transport()
        connection = protocol(transport)
        connection.data_received(b"POST /healthz HTTP/1.1\r\nHost: t\r\n")
        await settle()
        connection.shutdown()
        return transport, connection.refuse_open_head()

    transport, refused = asyncio.run(run())
    assert refused and statuses(transport.written) == [b"503"], transport.written
    assert b'"code":"shutting-down"' in transport.written and transport.closing


def test_the_connection_tells_each_request_whether_requests_wait_behind_it() -> None:
    seen: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(read_ahead(scope))
        await answer_ok(scope, receive, send)

    async def run() -> None:
        connection = protocol(Transport())
        connection.app = app
        connection.data_received(REQUEST * 3)
        await settle()

    asyncio.run(run())
    assert seen == [True, True, False]


def test_while_draining_only_the_last_request_read_closes_its_connection() -> None:
    """Each answer carried `Connection: close` during the drain: requests a client pipelined
    behind the first were dropped (a reset when still unread, cutting off that answer too)."""

    async def run() -> Transport:
        transport = Transport()
        connection = protocol(transport)
        connection.app = RequestContextMiddleware(answer_ok, draining=lambda: True)
        connection.data_received(REQUEST * 3)
        await settle(60)
        return transport

    transport = asyncio.run(run())
    assert statuses(transport.written) == [b"200"] * 3, transport.written
    assert transport.written.lower().count(b"connection: close") == 1 and transport.closing
