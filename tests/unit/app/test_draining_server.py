"""The server process's uvicorn.Server (app/serve.py) while it drains."""

from __future__ import annotations

import asyncio
from email.utils import parsedate_to_datetime

from app.config import Settings
from app.lifespan import Lifecycle
from app.production.shutdown import GracefulShutdown
from app.serve import DrainingServer, uvicorn_config

STALE = (b"date", b"Thu, 01 Jan 1970 00:00:00 GMT")


def test_the_date_header_keeps_time_while_the_drain_waits_for_requests() -> None:
    """uvicorn remakes its Date header in its main loop, which ends when the listener closes,
    and each request answers with the headers of the second its head came in: answers given
    while the drain waited (up to the shutdown timeout) carried a stale Date."""
    settings = Settings(_env_file=None, env="development")
    server = DrainingServer(uvicorn_config(settings), settings, Lifecycle(GracefulShutdown()))
    server.servers = []

    async def drain() -> list[tuple[bytes, bytes]]:
        server.server_state.default_headers = [STALE]
        # What a request whose head came in before the drain answers with (uvicorn hands each
        # request the server's list of that second).
        in_flight = server.server_state.default_headers

        async def request_in_flight() -> None:
            await asyncio.sleep(1.5)
            server.force_exit = True  # done: and no lifespan to shut down in this test
            server.server_state.tasks.discard(task)

        task = asyncio.get_running_loop().create_task(request_in_flight())
        server.server_state.tasks.add(task)
        await server.shutdown()
        assert server.server_state.default_headers is in_flight
        return in_flight

    headers = asyncio.run(drain())
    assert STALE not in headers
    date = dict(headers)[b"date"].decode()
    assert parsedate_to_datetime(date).year > 1970
