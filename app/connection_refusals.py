"""The connection's own problem answers: no middleware ran, so they are made here.

Requests the app never sees (a head over the limit, a request target too long, bytes httptools
cannot parse, a head too slow) are answered with a problem like the app's, with its security
headers, and the connection closes (`Connection: close`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import cast

from starlette.types import Receive, Scope, Send
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from app.errors import PROBLEM_CONTENT_TYPE, is_v2_path, problem_body
from app.middleware.context import SECURITY_HEADERS

log = logging.getLogger("frameworm.connection")

MAX_URL_BYTES = 65535  # httptools.parse_url refuses longer ones
# The request target's query string. Every routed request has its query parsed (FastAPI's
# dependencies, /readyz's `verbose`), before any key is asked for: 60 KB of `v&v&...` cost 50 to
# 90 ms of the event loop a request. No route takes more than a flag.
MAX_QUERY_BYTES = 2048


def head_refusal(
    seen: int,
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
    limit: int,
    *,
    upgrade: bool = False,
) -> tuple[int, str, str] | None:
    """(status, code, detail) for a whole head refused before the app. `seen`: the bytes that
    carried it; only when they pass `limit` is the parsed head measured (less optional spaces).
    `upgrade`: httptools takes the request for an upgrade, and will skip its body."""
    line = len(method) + 1 + len(url) + len(" HTTP/1.1\r\n")
    if seen > limit and line + sum(len(k) + len(v) + 4 for k, v in headers) + 2 > limit:
        return 431, "headers-too-large", f"the request line and headers are over {limit // 1024} KB"
    if upgrade and any(_announces_a_body(name, value) for name, value in headers):
        detail = "an upgrade request cannot carry a body here: send it without Upgrade"
        return 400, "malformed-request", detail + " (curl: --http1.1)"
    if len(url) > MAX_URL_BYTES:
        return 431, "headers-too-large", "the request line is over 64 KB"
    if len(url.partition(b"?")[2]) > MAX_QUERY_BYTES:
        return 414, "uri-too-long", f"the query string is over {MAX_QUERY_BYTES} bytes"
    return None


def _announces_a_body(name: bytes, value: bytes) -> bool:
    return name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0") != b"")


def refusing_app(
    status: int, code: str, detail: str, v2: bool, who: Callable[[], dict[str, str | None]]
) -> ASGI3Application:
    """The app for a request refused once its head was whole: the problem, in its turn among
    pipelined requests. `v2`: the request was for the v2 protocol, whose clients read the
    `error` member; `who` gives the log line's client."""

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        request_id = uuid.uuid4().hex
        extra = {**who(), "request_id": request_id}
        log.warning("%s; answered %d", detail, status, extra=extra)
        body = problem_body(code, detail, request_id, v2=v2)
        headers = [*problem_headers(body), (b"x-request-id", request_id.encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return cast(ASGI3Application, refuse)


def problem_bytes(
    body: bytes, status: int, request_id: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole problem response, to write to the transport directly."""
    headers = [*default_headers, *problem_headers(body), (b"x-request-id", request_id.encode())]
    lines = [STATUS_LINE[status], *(b"%s: %s\r\n" % header for header in headers)]
    return b"".join(lines) + b"\r\n" + body


def problem_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """A problem response's headers: those of the app's own errors, and the connection closes."""
    return [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *SECURITY_HEADERS,
    ]


def is_v2_target(url: bytes) -> bool:
    """Whether a request target (as much of it as was read) is a v2 protocol path; the
    absolute form (`http://host/v2/...`) included."""
    path = url.partition(b"?")[0]
    if not path.startswith(b"/"):
        path = b"/" + path.partition(b"://")[2].partition(b"/")[2]
    return is_v2_path(path.decode("latin-1"))
