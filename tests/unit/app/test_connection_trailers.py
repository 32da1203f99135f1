"""Trailer fields (after a chunked body) never join the request's headers (RFC 9110 6.5.1):
the app reads `scope["headers"]` for the API key, Content-Type and Content-Encoding."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.support.connection import Transport, protocol


async def echo_headers(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps({"headers": [[k.decode(), v.decode()] for k, v in scope["headers"]]})
    content = answer.encode() + b"\n" + body
    length = [(b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": length})
    await send({"type": "http.response.body", "body": content})


def headers_seen(*pieces: bytes) -> list[list[str]]:
    async def run() -> bytes:
        transport = Transport()
        connection = protocol(transport, app=echo_headers)
        for piece in pieces:
            connection.data_received(piece)
            await asyncio.sleep(0)
        for _ in range(100):
            if b"\r\n\r\n" in transport.written and transport.written.endswith(b"hello"):
                break
            await asyncio.sleep(0)
        return transport.written

    written = asyncio.run(run())
    answer = written.split(b"\r\n\r\n", 1)[1].split(b"\n", 1)[0]
    headers: list[list[str]] = json.loads(answer)["headers"]
    return headers


HEAD = b"POST /infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
BODY_AND_TRAILERS = (
    b"5\r\nhello\r\n0\r\nX-API-Key: fw_trailer\r\nContent-Encoding: gzip\r\n"
    b"Authorization: Bearer fw_trailer\r\n\r\n"
)


def test_trailer_fields_arriving_with_the_head_are_not_request_headers() -> None:
    names = [name for name, _ in headers_seen(HEAD + BODY_AND_TRAILERS)]
    assert names == ["host", "transfer-encoding"]


def test_trailer_fields_arriving_later_are_not_request_headers_either() -> None:
    names = [name for name, _ in headers_seen(HEAD, BODY_AND_TRAILERS)]
    assert names == ["host", "transfer-encoding"]


def test_the_next_requests_headers_are_its_own() -> None:
    second = b"POST /infer HTTP/1.1\r\nHost: t\r\nX-API-Key: k2\r\nContent-Length: 5\r\n\r\nhello"

    async def run() -> bytes:
        transport = Transport()
        connection = protocol(transport, app=echo_headers)
        connection.data_received(HEAD + BODY_AND_TRAILERS + second)
        for _ in range(200):
            if transport.written.count(b"HTTP/1.1 200") == 2:
                break
            await asyncio.sleep(0)
        return transport.written

    answers = asyncio.run(run()).split(b"HTTP/1.1 200")[1:]
    second_headers = json.loads(answers[1].split(b"\r\n\r\n", 1)[1].split(b"\n", 1)[0])
    assert second_headers["headers"] == [
        ["host", "t"],
        ["x-api-key", "k2"],
        ["content-length", "5"],
    ]
