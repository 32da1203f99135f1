"""The connection's read-ahead bounds (app/connection.py), driven with bytes and no socket:
pipelined requests and a chunked body's framing (tests/support/connection.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.chunked_body import FREE_CHUNKS, MIN_MEAN_CHUNK_BYTES
from app.client_gone import connection_refusal
from app.read_ahead import FEED_BYTES, MAX_PIPELINED
from tests.support.connection import REQUEST, Transport, protocol


def test_pipelined_requests_are_read_ahead_a_bounded_number_at_a_time_and_all_answered() -> None:
    """One read of 3,000 tiny pipelined requests was parsed whole into 3,000 queued requests,
    and every answer let another read in: memory grew by hundreds of MB in seconds."""
    count = 3000

    async def run() -> tuple[int, int]:
        transport = Transport()
        connection = protocol(transport)
        most = 0
        connection.data_received(REQUEST * count)
        # The bound is checked between pieces of a read: at most one piece past it.
        most = max(most, len(connection.pipeline))
        assert not transport.reading  # the rest waits, and so does the socket
        for _ in range(20 * count):
            await asyncio.sleep(0)
            most = max(most, len(connection.pipeline))
            if transport.written.count(b"HTTP/1.1 200") == count:
                break
            # With requests read ahead, reading stays paused; with none, it goes on.
            assert transport.reading == (not connection.pipeline and not connection._unread)
        return transport.written.count(b"HTTP/1.1 200"), most

    answered, most = asyncio.run(run())
    assert answered == count
    assert most <= MAX_PIPELINED + FEED_BYTES // len(REQUEST) + 1


@pytest.mark.parametrize("trailer", [True, False])
def test_a_chunked_body_s_framing_is_bounded_like_a_head(trailer: bool) -> None:
    """Trailer fields after the last chunk, or an endless chunk-size line, are not body: they
    were never counted, and httptools joins a trailer field by copying it whole each time."""

    async def run() -> bytes:
        transport = Transport()
        connection = protocol(transport, max_head_kb=8)
        connection.data_received(
            b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await asyncio.sleep(0)
        connection.data_received(b"5\r\nhello\r\n")  # some body first
        connection.data_received(b"0\r\nX-Trailer: " if trailer else b"")
        for _ in range(100):
            connection.data_received(b"a" * 1024 if trailer else b"0" * 1024)
            if transport.closing:
                break
            await asyncio.sleep(0)
        return transport.written

    written = asyncio.run(run())
    assert written.startswith(b"HTTP/1.1 431 ")  # the request whose body it was is answered
    assert b"size lines and trailers are over 8 KB" in written


def test_a_query_string_over_the_limit_is_414_before_the_app() -> None:
    async def run() -> bytes:
        transport = Transport()
        connection = protocol(transport)
        connection.data_received(b"GET /healthz?" + b"v&" * 2000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0)
        return transport.written

    written = asyncio.run(run())
    assert written.startswith(b"HTTP/1.1 414 ")
    assert b"the query string is over 2048 bytes" in written


def test_pipelined_posts_reading_their_bodies_do_not_resume_reading_past_the_bound() -> None:
    """An app reading its body resumes reading (uvicorn's receive): with bytes held unparsed,
    each POST let another read in behind them, and memory grew without end."""
    post = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    count = 2000

    async def run() -> int:
        transport = Transport()
        connection = protocol(transport)
        connection.data_received(post * count)
        for _ in range(50 * count):
            await asyncio.sleep(0)
            if connection._unread:
                assert not transport.reading  # held while bytes wait unparsed
            if transport.written.count(b"HTTP/1.1 200") == count:
                break
        assert transport.reading  # all answered: reading goes on
        return transport.written.count(b"HTTP/1.1 200")

    assert asyncio.run(run()) == count


def test_a_body_in_many_small_chunks_is_not_refused_for_its_framing() -> None:
    """Framing is bounded since the last body byte: 10,000 chunks of 100 bytes (1 MB, Java's
    chunked streaming mode writes such) were refused 431 when every size line was summed."""

    async def run() -> bytes:
        transport = Transport()
        connection = protocol(transport, max_head_kb=8)
        connection.data_received(
            b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunks = b"64\r\n" + b"a" * 100 + b"\r\n"
        for _ in range(100):
            connection.data_received(chunks * 100)
            await asyncio.sleep(0)
        connection.data_received(b"0\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0)
        return transport.written

    written = asyncio.run(run())
    assert written.startswith(b"HTTP/1.1 200") and b" 431 " not in written


def test_framing_in_the_piece_that_ends_the_body_is_counted_too() -> None:
    """Only pieces that left the body open were counted: a trailer of the limit plus most of
    one piece, ending the body, was accepted."""

    async def run() -> bytes:
        transport = Transport()
        connection = protocol(transport, max_head_kb=64)
        start = (
            b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Trailer: "
        )
        # The piece holding the head is not counted; the next four (64 KB, the limit) leave
        # the body open; the last, half a piece, ends it.
        size = 5 * FEED_BYTES + FEED_BYTES // 2
        connection.data_received(start + b"a" * (size - len(start) - 4) + b"\r\n\r\n")
        for _ in range(100):
            if transport.closing:
                break
            await asyncio.sleep(0)
        return transport.written

    written = asyncio.run(run())
    assert b"HTTP/1.1 431 " in written  # after the request's own answer, then closed
    assert b"size lines and trailers are over 64 KB" in written


@pytest.mark.parametrize("path", ["/healthz", "/early"])
def test_a_body_in_tiny_chunks_is_refused_past_a_bound(path: str) -> None:
    """Each chunk is a Python call on the event loop: 1-byte chunks at a few MB/s from one
    connection held it for seconds, and on after an early answer (a 401) while the rest of
    the body was read and dropped. Refused once past FREE_CHUNKS averaging under
    MIN_MEAN_CHUNK_BYTES; an early answer gets no second one."""

    async def run() -> tuple[bytes, int]:
        transport = Transport()
        connection = protocol(transport)
        head = f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        connection.data_received(head.encode())
        await asyncio.sleep(0)
        fed = 0
        while not transport.closing and fed < 100:
            connection.data_received(b"1\r\nX\r\n" * 1000)
            fed += 1
            for _ in range(3):
                await asyncio.sleep(0)
        return transport.written, connection._bounds.chunks

    written, chunks = asyncio.run(run())
    assert chunks <= FREE_CHUNKS + FEED_BYTES // 6 + 1000  # stopped within a read of the bound
    if path == "/early":
        assert written.count(b"HTTP/1.1 ") == 1 and written.startswith(b"HTTP/1.1 401")
    else:
        assert written.startswith(b"HTTP/1.1 400") and b"malformed-request" in written
        assert f"under {MIN_MEAN_CHUNK_BYTES} bytes".encode() in written


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_arriving_in_small_reads_is_not_taken_for_tiny_chunks(chunked: bool) -> None:
    """Each call for a body was counted as a chunk: 100 KB with a Content-Length in 50-byte
    reads (a slow network), or in 100-byte chunks split over 70-byte reads, was refused 400.
    A read costs its call whatever it holds; only many calls for one read are counted."""

    async def run() -> bytes:
        transport = Transport()
        connection = protocol(transport)
        size = 100_000
        if chunked:
            head = b"Transfer-Encoding: chunked\r\n"
            body = (b"64\r\n" + b"a" * 100 + b"\r\n") * (size // 100) + b"0\r\n\r\n"
            read = 70
        else:
            head, body, read = f"Content-Length: {size}\r\n".encode(), b"a" * size, 50
        connection.data_received(b"POST /healthz HTTP/1.1\r\nHost: t\r\n" + head + b"\r\n")
        for start in range(0, len(body), read):
            connection.data_received(body[start : start + read])
            if start % (100 * read) == 0:
                await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        return transport.written

    written = asyncio.run(run())
    assert written.startswith(b"HTTP/1.1 200"), written[:200]


def test_tiny_chunks_in_the_read_that_carries_the_head_are_counted_too() -> None:
    """Only pieces read inside a body were counted: a head and 2,600 one-byte chunks in one
    read were free, and a client sending each request so paid three times the allowance."""

    written = asyncio.run(head_and_tiny_chunks_in_one_read("/healthz"))
    assert written.startswith(b"HTTP/1.1 400") and b"chunks average under" in written


async def head_and_tiny_chunks_in_one_read(path: str, app: Any = None) -> bytes:
    """What the connection writes for a head and 2,600 one-byte chunks sent in one read."""
    transport = Transport()
    connection = protocol(transport)
    if app is not None:
        connection.app = app
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    connection.data_received(head.encode() + b"1\r\nX\r\n" * 2600)
    for _ in range(5):
        await asyncio.sleep(0)
    return transport.written


def test_a_refusal_before_the_app_runs_gives_the_app_the_request_id_the_client_got() -> None:
    """The head and the tiny chunks in one read: the connection answers before the app runs.
    The app, once it runs, takes that request id and the refusal's status for its log."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await receive()

    written = asyncio.run(head_and_tiny_chunks_in_one_read("/infer", app))
    problem = json.loads(written.partition(b"\r\n\r\n")[2])
    (scope,) = seen
    assert scope["state"]["request_id"] == problem["request_id"]
    assert connection_refusal(scope) == ("malformed-request", problem["detail"])
