"""Peer: the floor. A bare ASGI app on uvicorn that reads the body and returns a constant.

No framework, no model, no checks: what one HTTP round trip costs on this machine with the same
server stack (uvicorn, uvloop, httptools) and load generator. Frameworm's fixed cost per request
is read against this row, not against zero. Its `/infer` answer is a fixed Frameworm-shaped body,
so it is exempt from the answer check (bench.py knows).

    uvicorn tests.load.peers.constant:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

ANSWER = b'{"model":"constant","version":"0","outputs":{},"request_id":null}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message: Message = await receive()
        more = message.get("more_body", False)
    status = 200 if scope["path"] in ("/infer", "/readyz") else 404
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
