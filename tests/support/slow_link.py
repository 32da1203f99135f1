"""A slow network link in front of a real service: a TCP relay on 127.0.0.1 that holds what the
client sends for `delay_s` before passing it on (in order), and relays the answers at once.

    with slow_link(redis_server.port) as link:
        ...  # connect to link.port
        link.delay_s = 0.5  # from now on, each command reaches the service half a second late

A slow service, not a hung one: every command is still answered, late. The relay runs its own
event loop on a thread, so tests on any loop (or none) can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class SlowLink:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name="slow-link", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the slow link did not start")

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        # Cut the connections still open, and let their relays end before the loop closes.
        for writer in self._open:
            writer.close()
        relays = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.gather(*relays, return_exceptions=True)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        try:
            service_in, service_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.close()
            return
        self._open |= {client_out, service_out}
        try:
            await asyncio.gather(
                self._delayed(client_in, service_out),
                _copy(service_in, client_out),
                return_exceptions=True,
            )
        finally:
            self._open -= {client_out, service_out}
            for writer in (client_out, service_out):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _delayed(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        # Each chunk is due `delay_s` after it arrived; a queue keeps them in order.
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def forward() -> None:
            while (item := await queue.get()) is not None:
                due, chunk = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sink.write(chunk)
                await sink.drain()
            sink.close()

        forwarding = asyncio.create_task(forward())
        with contextlib.suppress(OSError):
            while chunk := await source.read(65536):
                queue.put_nowait((time.monotonic() + self.delay_s, chunk))
        queue.put_nowait(None)
        await forwarding


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    sink.close()


@contextmanager
def slow_link(target_port: int) -> Iterator[SlowLink]:
    link = SlowLink(target_port)
    link.start()
    try:
        yield link
    finally:
        link.stop()
