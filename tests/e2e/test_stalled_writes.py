"""A client that stops reading large answers (`app/connection.py`, the write stall), over a raw
socket: a server of the demo decoder, whose answer to 128 generated items is about 1.3 MB."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.hardened import HardenedServer, hardened_servers

KEY = "stalled-writes-bootstrap-key-0123456789"
BODY = b'{"parameters": {"batch_size": 128, "seed": 1}}'
REQUEST = (
    b"POST /infer HTTP/1.1\r\nHost: test\r\nX-API-Key: %s\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (KEY.encode(), len(BODY), BODY)
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HardenedServer]:
    config: dict[str, str | None] = {
        "FRAMEWORM_BOOTSTRAP_API_KEY": KEY,
        "FRAMEWORM_MODEL": "vae-digits-decoder",
        "FRAMEWORM_RATE_LIMIT": "100000/minute",
        "FRAMEWORM_WRITE_STALL_S": "2",
    }
    with hardened_servers(tmp_path_factory.mktemp("stalled"), {"stalled": config}) as servers:
        yield servers["stalled"]


def test_a_connection_cut_off_for_not_reading_is_reset_and_its_answers_dropped(
    server: HardenedServer,
) -> None:
    """Every request read, none left unread (so closing alone sends no reset): the socket was
    closed with its answers still queued, and the kernel went on sending megabytes of them
    for as long as the client would take them (FIN-WAIT-1). A reset drops them."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(REQUEST * 10)  # about 13 MB of answers, far past the socket buffers
        until = time.monotonic() + 30
        while "a client read nothing for 2s; aborted" not in server.logs():
            assert time.monotonic() < until, "the server kept the unread connection open"
            time.sleep(0.1)
        sock.settimeout(10)
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        assert client.post("/infer", content=BODY).status_code == 200  # still serving
