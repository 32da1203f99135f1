"""The server process's uvicorn.Server (app/serve.py) while it drains."""

from __future__ import annotations

import asyncio
import signal
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


def draining_server(*, worker: bool = False) -> DrainingServer:
    settings = Settings(_env_file=None, env="development")
    lifecycle = Lifecycle(GracefulShutdown())
    return DrainingServer(uvicorn_config(settings), settings, lifecycle, worker=worker)


def scheduled_by(server: DrainingServer, *signals: int) -> list[object]:
    """What the loop is asked to run for these signals, handled before its next turn."""
    loop = asyncio.new_event_loop()
    scheduled: list[object] = []
    loop.call_soon_threadsafe = scheduled.append  # type: ignore[method-assign,assignment]
    server._loop = loop
    try:
        for sig in signals:
            server.handle_exit(sig, None)
    finally:
        loop.close()
    return scheduled


def test_a_second_signal_before_the_loop_began_the_drain_is_still_the_second() -> None:
    """Whether a signal was the second was read from the drain's state, which the loop sets
    only when it runs `begin_drain`: two signals handled before the loop's next turn both
    began the drain, and the "exit at once" of the second was lost."""
    server = draining_server()
    assert scheduled_by(server, signal.SIGTERM, signal.SIGTERM) == [
        server.begin_drain,
        server._force_exit,
    ]


def test_a_worker_leaves_sigint_to_its_supervisor() -> None:
    """A terminal's Ctrl-C reaches each worker directly and, as SIGTERM, from the supervisor, in
    either order: a worker that took the SIGINT after the SIGTERM as a second signal exited at
    once instead of draining."""
    server = draining_server(worker=True)
    before = signal.getsignal(signal.SIGINT)
    with server.capture_signals():
        assert signal.getsignal(signal.SIGINT) is before
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
        assert signal.getsignal(signal.SIGQUIT) == server.handle_exit
    assert signal.getsignal(signal.SIGQUIT) is signal.SIG_DFL


def test_a_worker_drains_once_and_exits_at_once_at_sigquit() -> None:
    server = draining_server(worker=True)
    # The group's SIGTERM and the supervisor's copy: one drain.
    assert scheduled_by(server, signal.SIGTERM, signal.SIGTERM) == [server.begin_drain]
    # The supervisor's "exit at once", during the drain or before it.
    assert scheduled_by(server, signal.SIGQUIT) == [server._force_exit]
    fresh = draining_server(worker=True)
    assert scheduled_by(fresh, signal.SIGQUIT) == [fresh._force_exit]


def test_the_forced_exit_stops_accepting_before_it_answers_what_is_open() -> None:
    """The listener stayed open while the stragglers were answered 503: clients connecting
    again in that window were reset (a POST that meets a reset is not retried)."""
    server = draining_server()
    events: list[str] = []

    class Listener:
        def close(self) -> None:
            events.append("listener closed")

    async def shed() -> tuple[int, int]:
        events.append("shed")
        return 0, 0

    server.servers = [Listener()]  # type: ignore[list-item]
    server.lifecycle.shed_stragglers = shed  # type: ignore[method-assign]

    async def force() -> None:
        server._force_exit()
        assert events == ["listener closed"]  # at once, before any answer
        while not server.force_exit:
            await asyncio.sleep(0.01)

    asyncio.run(force())
    assert events == ["listener closed", "shed"]
