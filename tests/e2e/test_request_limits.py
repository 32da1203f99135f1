"""Request limits of a running `frameworm serve`, sent byte by byte over raw sockets.

One server (auth on with a bootstrap key, a 1 s body deadline, 2 concurrent requests at
most, a 2 s write stall, a 1.5 s keep-alive) takes oversized, chunked, slow, nested and
decompression-bomb requests, oversized headers and request lines and clients that never read;
after each test it must still classify a digit. (Head deadlines and protocol errors:
test_connection_deadlines.py.)
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.support.hardened import HardenedServer, digit_document, hardened_servers

KEY = "request-limits-bootstrap-key-0123456789"
MB = 1024 * 1024
AUTH = b"X-API-Key: " + KEY.encode() + b"\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HardenedServer]:
    config: dict[str, str | None] = {
        "FRAMEWORM_BOOTSTRAP_API_KEY": KEY,
        "FRAMEWORM_BODY_TIMEOUT_S": "1",
        "FRAMEWORM_MAX_CONCURRENCY": "2",
        "FRAMEWORM_RATE_LIMIT": "100000/minute",
        "FRAMEWORM_WRITE_STALL_S": "2",
        "FRAMEWORM_KEEP_ALIVE_S": "1.5",
    }
    with hardened_servers(tmp_path_factory.mktemp("limits"), {"limits": config}) as servers:
        yield servers["limits"]


@pytest.fixture
def client(server: HardenedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10, headers={"x-api-key": KEY}) as client:
        yield client
    # The server keeps serving after whatever the test sent it.
    with httpx.Client(base_url=server.url, timeout=10, headers={"x-api-key": KEY}) as after:
        assert after.post("/infer", json=digit_document()).status_code == 200


def head(path: str, *lines: bytes) -> bytes:
    return b"POST " + path.encode() + b" HTTP/1.1\r\nHost: test\r\n" + AUTH + b"".join(lines)


def read_status(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int, bytes]:
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_a_declared_11_mb_body_is_refused_with_413_before_it_is_sent(
    server: HardenedServer, client: httpx.Client
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            head("/infer", b"Content-Type: application/json\r\n")
            + b"Content-Length: %d\r\n\r\n" % (11 * MB)
            + b"[" * 1024
        )
        status, raw = read_status(sock)  # the other 11 MB are never sent
    assert status == 413, raw
    assert b"application/problem+json" in raw
    assert b"x-frame-options: DENY" in raw


def send_chunked(sock: socket.socket, total: int, chunk: int = 64 * 1024) -> int:
    """Chunks until `total` bytes or until the server answers; the bytes sent."""
    sent = 0
    frame = b"%x\r\n" % chunk + b"0" * chunk + b"\r\n"
    while sent < total and not answered(sock):
        try:
            sock.sendall(frame)
        except OSError:
            break
        sent += chunk
    return sent


def test_an_11_mb_chunked_body_is_refused_with_413(
    server: HardenedServer, client: httpx.Client
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            head("/infer", b"Content-Type: application/json\r\n")
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        send_chunked(sock, 11 * MB)
        status, raw = read_status(sock)
    assert status == 413, raw


def test_a_body_trickled_slower_than_the_body_deadline_gets_408(
    server: HardenedServer, client: httpx.Client
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            head("/infer", b"Content-Type: application/json\r\n", b"Content-Length: 1000\r\n\r\n")
        )
        started = time.monotonic()
        while not answered(sock) and time.monotonic() - started < 10:
            sock.sendall(b" ")
            time.sleep(0.25)
        status, raw = read_status(sock)
    assert status == 408, raw
    assert time.monotonic() - started < 5


def test_more_requests_than_the_concurrency_cap_get_503_with_retry_after(
    server: HardenedServer, client: httpx.Client
) -> None:
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        for sock in slow:  # each holds a slot until its body deadline (1 s)
            sock.sendall(
                head("/infer", b"Content-Type: application/json\r\n", b"Content-Length: 10\r\n\r\n")
            )
        time.sleep(0.3)
        shed_before = shed_for_concurrency(client)
        response = client.post("/infer", json=digit_document())
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["code"] == "overloaded"
        assert shed_for_concurrency(client) == shed_before + 1
        assert client.get("/healthz").status_code == 200  # probes are never refused for load
    finally:
        for sock in slow:
            sock.close()
    # Both slots are freed at the body deadline.
    deadline = time.monotonic() + 5
    while client.post("/infer", json=digit_document()).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def shed_for_concurrency(client: httpx.Client) -> float:
    """frameworm_requests_shed_total{reason="concurrency"}, 0 before the first."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('frameworm_requests_shed_total{reason="concurrency"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("transport", ["json", "multipart"])
@pytest.mark.parametrize("side", [30_000, 5_000])
def test_an_image_bomb_is_refused_before_it_is_decoded(
    client: httpx.Client, transport: str, side: int
) -> None:
    bomb = png_declaring(side, side)
    assert len(bomb) < 200
    started = time.monotonic()
    if transport == "json":
        image = {"b64": base64.b64encode(bomb).decode(), "content_type": "image/png"}
        response = client.post("/infer", json={"inputs": {"image": image}})
    else:
        response = client.post("/infer", files={"image": ("bomb.png", bomb, "image/png")})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("path", ["/infer", "/v2/models/cnn-digits/infer"])
def test_json_nested_100000_levels_deep_is_refused_with_400(
    client: httpx.Client, path: str
) -> None:
    depth = 100_000
    body = b'{"inputs": {"image": ' + b"[" * depth + b"]" * depth + b"}}"
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "malformed-request"


def nested(depth: int) -> bytes:
    return b'{"inputs": {"image": ' + b"[" * depth + b"0" + b"]" * depth + b"}}"


def test_json_nested_past_the_depth_limit_is_400_and_within_it_is_422(
    client: httpx.Client,
) -> None:
    # FRAMEWORM_MAX_JSON_DEPTH is 32 by default: 50 levels are over it.
    over = client.post("/infer", content=nested(50), headers={"content-type": "application/json"})
    assert over.status_code == 400, over.text
    within = client.post("/infer", content=nested(20), headers={"content-type": "application/json"})
    assert within.status_code == 422, within.text
    assert within.json()["code"] == "invalid-input"


def test_a_client_without_a_key_is_refused_before_any_limit_and_holds_no_slot(
    server: HardenedServer, client: httpx.Client
) -> None:
    """Auth comes first: a keyless client's body is never read (an 11 MB one is a plain 401),
    and keyless requests never take the concurrency slots (2 here) that keyed ones need."""
    oversized = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (11 * MB)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /infer HTTP/1.1\r\nHost: test\r\n" + oversized)
        status, raw = read_status(sock)
    assert status == 401, raw
    stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        for sock in stalled:  # a body that never comes: with a key, each would hold a slot
            sock.sendall(
                b"POST /infer HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n"
            )
        time.sleep(0.3)
        assert client.post("/infer", json=digit_document()).status_code == 200
    finally:
        for sock in stalled:
            sock.close()


def test_a_valid_request_right_at_the_size_limit_is_not_refused_for_size(
    client: httpx.Client,
) -> None:
    padding = " " * (10 * MB - 1024)
    body = orjson.dumps(digit_document())[:-1] + padding.encode() + b"}"
    response = client.post("/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_the_server_answers_probes_while_a_slow_body_holds_a_slot(
    server: HardenedServer, client: httpx.Client
) -> None:
    done = threading.Event()

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                head("/infer", b"Content-Type: application/json\r\n", b"Content-Length: 99\r\n\r\n")
            )
            done.wait(3)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        assert client.get("/readyz").status_code == 200
    finally:
        done.set()
        thread.join()


def test_a_header_section_over_the_limit_is_431_and_cheap(
    server: HardenedServer, client: httpx.Client
) -> None:
    """httptools alone copies a growing header whole for every piece: 200 MB held the loop for
    minutes. Past 64 KB the connection gets 431 and is closed."""
    piece = b"a" * 65536
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: ")
        with contextlib.suppress(OSError):  # the server closes while more is being sent
            for _ in range(16 * 16):  # up to 16 MB
                sock.sendall(piece)
        status, raw = read_status(sock)
    assert status == 431, raw
    assert b"headers-too-large" in raw
    assert time.monotonic() - started < 10
    assert client.get("/healthz").status_code == 200


def test_a_client_that_never_reads_its_answers_is_cut_off_after_the_write_stall(
    server: HardenedServer, client: httpx.Client
) -> None:
    """The connection pipelines thousands of requests and reads nothing: its answers fill the
    socket, and the request being answered would hold its concurrency slot for good. After the
    write stall (2 s here) the server aborts the connection (a reset), and the slot is free."""
    request = b"GET /infer HTTP/1.1\r\nHost: test\r\n" + AUTH + b"\r\n"  # 405, after auth
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        data, sent, blocked_since = request * 20_000, 0, None
        while sent < len(data):
            try:
                sent += sock.send(data[sent:])
                blocked_since = None
            except BlockingIOError:  # the server stopped reading: it is stuck writing
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 1:
                    break
                time.sleep(0.02)
        until = time.monotonic() + 15
        while "a client read nothing for 2s; aborted" not in server.logs():
            assert time.monotonic() < until, "the server kept the unread connection open"
            time.sleep(0.1)
    # The request it was answering ended as a disconnect, not as an error of the app.
    assert "Exception in ASGI application" not in server.logs()
    assert client.post("/infer", json=digit_document()).status_code == 200


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_setting(
    server: HardenedServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        probe = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
        sock.sendall(probe)
        assert read_status(sock)[0] == 200
        time.sleep(0.5)  # idle, within the keep-alive: the connection is reused
        sock.sendall(probe)
        assert read_status(sock)[0] == 200
        idle_from = time.monotonic()
        sock.settimeout(10)
        while sock.recv(65536):  # the rest of the second answer, then the server's close
            pass
        assert 1.2 < time.monotonic() - idle_from < 4  # the default would be 5 s


def refused_head(server: HardenedServer, request: bytes) -> tuple[int, bytes]:
    """Send a head in one piece; the status and all of the 431 answer that the server sends."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request)
        status, raw = read_status(sock)
        # The body may follow the head in a later segment; past it the server closes (a reset,
        # when it closed before reading all that was sent).
        with contextlib.suppress(ConnectionResetError):
            while b"headers-too-large" not in raw and (chunk := sock.recv(65536)):
                raw += chunk
    return status, raw


@pytest.mark.parametrize("header_kb", [65, 70, 200])
def test_a_head_over_the_limit_that_arrives_in_one_piece_is_431_too(
    server: HardenedServer, client: httpx.Client, header_kb: int
) -> None:
    """A head that starts and ends in one read was never counted piece by piece."""
    pad = b"X-Pad: " + b"a" * (header_kb * 1024) + b"\r\n"
    status, raw = refused_head(server, b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + pad + b"\r\n")
    assert status == 431, raw
    assert b"headers-too-large" in raw and b"connection: close" in raw.lower()


@pytest.mark.parametrize("url_kb", [65, 100, 200])
def test_a_request_line_over_the_limit_is_431_whatever_httptools_can_parse(
    server: HardenedServer, client: httpx.Client, url_kb: int
) -> None:
    """A URL over 64 KiB is more than httptools parses: in one read, the head was answered 400
    (text/plain) before its size was looked at."""
    url = b"/healthz?q=" + b"a" * (url_kb * 1024)
    status, raw = refused_head(server, b"GET " + url + b" HTTP/1.1\r\nHost: test\r\n\r\n")
    assert status == 431, raw
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert b"content-type: application/problem+json" in head and b"connection: close" in head
    assert b"x-content-type-options: nosniff" in head and b"cache-control: no-store" in head
    assert b"headers-too-large" in raw


def test_a_head_just_under_the_limit_is_served(server: HardenedServer) -> None:
    pad = b"X-Pad: " + b"a" * (63 * 1024) + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + pad + b"\r\n")
        assert read_status(sock)[0] == 200


def test_a_websocket_upgrade_is_answered_as_plain_http_with_the_usual_headers(
    server: HardenedServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /infer HTTP/1.1\r\nHost: test\r\n" + AUTH + b"Connection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        status, raw = read_status(sock)
    assert status == 405, raw  # what GET /infer is, upgrade or not
    assert b"x-content-type-options: nosniff" in raw.lower()
    assert b"application/problem+json" in raw
    # Deliberate, so not warned about (uvicorn logged two warnings, one of them wrong).
    assert "Unsupported upgrade request" not in server.logs()
    assert "No supported WebSocket library" not in server.logs()
