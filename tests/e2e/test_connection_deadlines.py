"""Deadlines and protocol errors of the connection itself (`app/connection.py`), over raw sockets.

One server: a 1 s keep-alive (a connection waiting for a request, new or after a response,
closes after it), a 2 s header timeout (a begun head must be whole within it: 408, closed), a
128 KB head limit (past httptools' 64 KiB URL limit). Bytes httptools cannot parse get a 400
problem, not uvicorn's text/plain. After each test the server must still classify a digit.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support.hardened import HardenedServer, digit_document, hardened_servers

KEY = "connection-deadlines-bootstrap-key-0123456789"
KEEP_ALIVE_S = 1.0
HEADER_TIMEOUT_S = 2.0
MARGIN_S = 3.0  # a loaded CI machine's scheduling, on top of a deadline
SECURITY_HEADERS = (
    b"cache-control: no-store",
    b"x-content-type-options: nosniff",
    b"x-frame-options: deny",
    b"referrer-policy: no-referrer",
    b"content-security-policy: default-src 'none'",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HardenedServer]:
    config: dict[str, str | None] = {
        "FRAMEWORM_BOOTSTRAP_API_KEY": KEY,
        "FRAMEWORM_RATE_LIMIT": "100000/minute",
        "FRAMEWORM_KEEP_ALIVE_S": str(KEEP_ALIVE_S),
        "FRAMEWORM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "FRAMEWORM_MAX_HEADER_KB": "128",
    }
    with hardened_servers(tmp_path_factory.mktemp("deadlines"), {"deadlines": config}) as servers:
        yield servers["deadlines"]


@pytest.fixture
def connect(server: HardenedServer) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        yield sock
    # The server keeps serving after whatever the test sent it, and never logged a traceback.
    with httpx.Client(base_url=server.url, timeout=10, headers={"x-api-key": KEY}) as after:
        assert after.post("/infer", json=digit_document()).status_code == 200
    assert "Traceback" not in server.logs()


def until_closed(sock: socket.socket, bound_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and the seconds that took."""
    started, data = time.monotonic(), b""
    sock.settimeout(bound_s)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):  # socket.timeout (an open connection) fails the test
            data += chunk
    return data, time.monotonic() - started


def content_length(head: bytes) -> int:
    return next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )


def responses(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(status, lowercased head, body) of each Content-Length response in `data`."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = content_length(head)
        found.append((int(head.split(b" ", 2)[1]), head.lower(), rest[:length]))
        data = rest[length:]
    return found


def read_response(sock: socket.socket) -> int:
    """One whole Content-Length response from a connection that stays open: its status."""
    data = b""
    while True:
        head, end, body = data.partition(b"\r\n\r\n")
        if end and len(body) >= content_length(head):
            return int(head.split(b" ", 2)[1])
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed: {data!r}"
        data += chunk


def assert_problem(head: bytes, body: bytes, status: int, code: str) -> None:
    assert b"content-type: application/problem+json" in head, head
    assert b"connection: close" in head, head
    for header in SECURITY_HEADERS:
        assert header in head, (header, head)
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (status, code), problem
    # An id the client can quote, the same in the header and the body.
    assert f"x-request-id: {problem['request_id']}".encode() in head.split(b"\r\n"), head


def logged_for(server: HardenedServer, message: str, sock: socket.socket) -> list[dict[str, str]]:
    """The server's log records with `message` about the client at this socket's address."""
    client = f"127.0.0.1:{sock.getsockname()[1]}"
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return [r for r in records if message in r["message"] and r.get("client") == client]


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive(
    connect: socket.socket,
) -> None:
    data, waited = until_closed(connect, KEEP_ALIVE_S + MARGIN_S)
    assert data == b""  # closed quietly: no request, no answer
    assert KEEP_ALIVE_S * 0.8 < waited < KEEP_ALIVE_S + MARGIN_S


def test_a_head_that_stops_halfway_is_answered_408_and_closed_after_the_header_timeout(
    server: HardenedServer, connect: socket.socket
) -> None:
    connect.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    data, waited = until_closed(connect, HEADER_TIMEOUT_S + MARGIN_S)
    ((status, head, body),) = responses(data)
    assert status == 408, data
    assert_problem(head, body, 408, "request-timeout")
    # The header timeout (2 s), not the keep-alive (1 s): a begun head is not an idle connection.
    assert HEADER_TIMEOUT_S * 0.9 < waited < HEADER_TIMEOUT_S + MARGIN_S
    deadline = time.monotonic() + 5
    while not (records := logged_for(server, "answered 408", connect)):
        assert time.monotonic() < deadline, "no log line names the closed connection"
        time.sleep(0.05)
    (record,) = records
    assert record["level"] == "info" and "exception" not in record, record
    assert record["request_id"] == json.loads(body)["request_id"]  # the client's to quote


def test_a_head_trickled_a_byte_at_a_time_is_cut_off_at_the_header_timeout(
    connect: socket.socket,
) -> None:
    """Every byte comes well within the keep-alive; the head as a whole takes too long."""
    request = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"s" * 40 + b"\r\n\r\n"
    started = time.monotonic()
    with contextlib.suppress(OSError):  # the server closes while bytes are still coming
        for byte in request:  # about 7 s in all
            connect.sendall(bytes([byte]))
            time.sleep(0.1)
            if select.select([connect], [], [], 0)[0]:  # answered
                break
            assert time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S, "never cut off"
    data, _ = until_closed(connect, MARGIN_S)
    assert responses(data)[0][0] == 408, data
    assert time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S + 0.5


def test_after_an_answer_a_pipelined_half_head_gets_the_header_timeout_not_the_keep_alive(
    connect: socket.socket,
) -> None:
    connect.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
    data, waited = until_closed(connect, HEADER_TIMEOUT_S + MARGIN_S)
    (first, _, _), (second, head, body) = responses(data)
    assert (first, second) == (200, 408), data
    assert_problem(head, body, 408, "request-timeout")
    assert HEADER_TIMEOUT_S * 0.9 < waited < HEADER_TIMEOUT_S + MARGIN_S


def test_a_slow_head_within_the_timeout_and_a_body_after_it_are_served(
    connect: socket.socket,
) -> None:
    """The header timeout ends with the head: a body later than it has its own deadline (30 s)."""
    body = orjson.dumps(digit_document())
    connect.sendall(b"POST /infer HTTP/1.1\r\nHost: test\r\n")
    time.sleep(HEADER_TIMEOUT_S / 2)
    connect.sendall(
        b"X-API-Key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (KEY.encode(), len(body))
    )
    time.sleep(HEADER_TIMEOUT_S + 0.5)
    connect.sendall(body)
    assert read_response(connect) == 200, "the request was not served"
    # Idle after the answer, within the keep-alive: the connection is reused.
    time.sleep(KEEP_ALIVE_S / 2)
    connect.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert read_response(connect) == 200


def answered_early(sock: socket.socket, length: int) -> None:
    """A POST without a key announcing `length` body bytes: answered 401 before its body."""
    sock.sendall(b"POST /infer HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % length)
    assert read_response(sock) == 401


def test_the_body_of_a_request_answered_early_cannot_keep_the_connection_open(
    connect: socket.socket,
) -> None:
    """Every byte within the keep-alive, the body as a whole past the header timeout."""
    answered_early(connect, 100_000)
    started = time.monotonic()
    with contextlib.suppress(OSError):  # the server closes while bytes are still coming
        while time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S:
            connect.sendall(b"x")
            time.sleep(0.2)
            if select.select([connect], [], [], 0)[0]:  # closed
                break
    data, _ = until_closed(connect, MARGIN_S)
    assert data == b""
    assert time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S + 0.5


def test_after_a_request_answered_early_the_connection_idles_under_the_keep_alive(
    connect: socket.socket,
) -> None:
    answered_early(connect, 10)
    connect.sendall(b"0123456789")  # the rest of its body: thrown away, the connection idle
    data, waited = until_closed(connect, KEEP_ALIVE_S + MARGIN_S)
    assert data == b"" and waited < KEEP_ALIVE_S + MARGIN_S


def test_after_a_request_answered_early_the_next_head_is_still_measured(
    connect: socket.socket,
) -> None:
    answered_early(connect, 10)
    connect.sendall(b"0123456789GET /healthz HTTP/1.1\r\nHost: test\r\n")
    with contextlib.suppress(OSError):  # the server closes while the head is still coming
        for _ in range(20):  # 200 KB of headers in pieces, past the 128 KB limit
            connect.sendall(b"X-Pad: " + b"p" * 10_240 + b"\r\n")
            time.sleep(0.01)
    data, _ = until_closed(connect, MARGIN_S)
    ((status, head, body),) = responses(data)
    assert status == 431, data
    assert_problem(head, body, 431, "headers-too-large")


MALFORMED = {
    "bad-content-length": b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n",
    "length-and-chunked": (
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad-chunk": (
        b"POST /infer HTTP/1.1\r\nHost: t\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz-echo-me\r\n{}\r\n"
    ),
    "nul-in-header": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Echo-Me: a\x00b\r\n\r\n",
    "folded-header": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Echo-Me: a\r\n  folded\r\n\r\n",
    "unknown-method": b"ECHOME /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_request_httptools_cannot_parse_is_a_400_problem(
    connect: socket.socket, request_bytes: bytes
) -> None:
    connect.sendall(request_bytes)
    data, _ = until_closed(connect, 10)
    ((status, head, body),) = responses(data)
    assert status == 400, data
    assert_problem(head, body, 400, "malformed-request")
    assert b"echo" not in data.lower() and b"traceback" not in data.lower()  # nothing sent back


def infer_request(body: bytes) -> bytes:
    return (
        b"POST /infer HTTP/1.1\r\nHost: t\r\nX-API-Key: %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (KEY.encode(), len(body), body)
    )


@pytest.mark.parametrize("refused", MALFORMED.values(), ids=MALFORMED.keys())
def test_requests_pipelined_before_an_unparseable_one_are_answered_then_it_gets_400(
    connect: socket.socket, refused: bytes
) -> None:
    """In one segment: a probe, an inference, then bytes httptools refuses. The two valid
    requests are answered in order (they were lost: the connection closed with no answer)."""
    connect.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        + infer_request(orjson.dumps(digit_document()))
        + refused
    )
    data, _ = until_closed(connect, 10)
    (probe, _, _), (inference, _, answer), (status, head, body) = responses(data)
    assert (probe, inference, status) == (200, 200, 400), data
    assert len(orjson.loads(answer)["outputs"]["probabilities"][0]) == 10
    assert_problem(head, body, 400, "malformed-request")


def test_a_body_longer_than_its_content_length_answers_the_request_then_400(
    connect: socket.socket,
) -> None:
    """The bytes past the declared length are read as the next head, which is not HTTP."""
    body = orjson.dumps(digit_document())
    connect.sendall(infer_request(body) + b" trailing bytes\r\n\r\n")
    data, _ = until_closed(connect, 10)
    (inference, _, _), (status, head, problem) = responses(data)
    assert (inference, status) == (200, 400), data
    assert_problem(head, problem, 400, "malformed-request")


def test_a_url_httptools_cannot_parse_under_a_raised_head_limit_is_431(
    connect: socket.socket,
) -> None:
    """The head (100 KB) is within FRAMEWORM_MAX_HEADER_KB (128 here), its URL past httptools'
    64 KiB: too large all the same, not malformed."""
    connect.sendall(b"GET /healthz?q=" + b"a" * 100 * 1024 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    data, _ = until_closed(connect, 10)
    ((status, head, body),) = responses(data)
    assert status == 431, data
    assert_problem(head, body, 431, "headers-too-large")
    assert b"request line is over 64 KB" in body


V2_INFER = b"/v2/models/cnn-digits/infer"
V2_ANSWERED_BY_THE_CONNECTION = {
    # (what is sent, the status): each refused before any middleware or route ran.
    "bad-chunk-in-body": (
        b"POST " + V2_INFER + b" HTTP/1.1\r\nHost: t\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n",
        400,
    ),
    "bad-header-in-head": (b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400),
    "head-over-the-limit": (
        b"POST " + V2_INFER + b" HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 130 * 1024 + b"\r\n\r\n",
        431,
    ),
    "absolute-form-target": (
        b"GET http://t/v2/health/ready HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
        400,
    ),
    "half-a-head": (b"POST " + V2_INFER + b" HTTP/1.1\r\nHost: t\r\n", 408),
}


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    V2_ANSWERED_BY_THE_CONNECTION.values(),
    ids=V2_ANSWERED_BY_THE_CONNECTION.keys(),
)
def test_a_v2_request_refused_by_the_connection_has_the_protocols_error_member(
    connect: socket.socket, request_bytes: bytes, status: int
) -> None:
    """tritonclient reads `error` from every v2 error body; without it, a 431 raised KeyError
    in the client instead of the server's reason."""
    with contextlib.suppress(ConnectionResetError):  # closed before all 130 KB were read
        connect.sendall(request_bytes)
    data, _ = until_closed(connect, HEADER_TIMEOUT_S + MARGIN_S)
    ((answered, _, body),) = responses(data)
    assert answered == status, data
    problem = json.loads(body)
    assert problem["error"] == problem["detail"], problem


def test_a_non_v2_request_refused_by_the_connection_has_no_error_member(
    connect: socket.socket,
) -> None:
    connect.sendall(MALFORMED["bad-chunk"])
    data, _ = until_closed(connect, 10)
    ((_, _, body),) = responses(data)
    assert "error" not in json.loads(body)


@pytest.mark.parametrize(
    ("with_id", "at_once", "media_type"),
    [
        (False, False, "application/json"),
        (True, False, "application/json"),
        (True, True, "application/json"),
        (True, True, "text/plain"),  # answered 415 by the app without reading its body
    ],
)
def test_a_body_refused_by_the_connection_is_logged_with_the_status_and_id_the_client_got(
    server: HardenedServer, connect: socket.socket, with_id: bool, at_once: bool, media_type: str
) -> None:
    """A body in tiny chunks is refused 400 by the connection: the app saw its client gone and
    logged a 499 under another request id than the client's. Sent with its head, it is refused
    before the app runs: the app's own answer (a 415) was logged, and the client's id lost."""
    head = (
        f"POST /infer HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\n"
        + ("X-Request-Id: caller-7\r\n" if with_id else "")
        + f"Content-Type: {media_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunks = b"1\r\n \r\n" * 1000
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        if at_once:
            connect.sendall(head.encode() + chunks * 20)
        else:
            connect.sendall(head.encode())
            time.sleep(0.2)  # the app runs and waits for the body
            for _ in range(20):
                connect.sendall(chunks)
    data, _ = until_closed(connect, 10)
    ((status, head_bytes, body),) = responses(data)
    problem = json.loads(body)
    assert (status, problem["code"]) == (400, "malformed-request"), problem
    request_id = problem["request_id"]
    assert request_id == "caller-7" or not with_id
    assert f"x-request-id: {request_id}".encode() in head_bytes.split(b"\r\n")
    deadline = time.monotonic() + 5
    while "request" not in (lines := logged_with_id(server, request_id)):
        assert time.monotonic() < deadline, f"no access line for the refused request: {lines}"
        time.sleep(0.1)
    assert lines["request"]["status"] == 400, lines
    assert lines["a chunked body refused: the chunked body's chunks average under 64 bytes"]


def logged_with_id(server: HardenedServer, request_id: str) -> dict[str, dict[str, object]]:
    """The server's log records about one request, by message."""
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return {r["message"]: r for r in records if r.get("request_id") == request_id}
