"""The HTTP connection (app/connection.py) driven with bytes and no socket: a transport that
records what the protocol does stands in for the socket, and a small ASGI app answers."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from app.connection import bounded_protocol

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def healthz(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/early":  # answers before reading the body, as a 401 does
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})
        return
    if scope["method"] == "POST":  # reads its body, as /infer does: uvicorn resumes reading
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(0)  # and works on it (the batcher, the model) before answering
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def protocol(
    transport: Transport,
    max_head_kb: int = 64,
    *,
    keep_alive_s: float = 5.0,
    header_timeout_s: float = 10.0,
    app: Any = healthz,
) -> Any:
    # No log_config or log_level: uvicorn would set its loggers' levels for the whole process.
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level=None,
        timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]  # a float works
        ws="none",  # as `frameworm serve`: an upgrade request is plain HTTP
    )
    config.load()
    cls = bounded_protocol(max_head_kb * 1024, 30.0, header_timeout_s)
    made = cls(config=config, server_state=ServerState(), app_state={})
    made.connection_made(transport)
    return made
