"""Calling blocking functions in daemon threads, so a hung one can be abandoned after a bound.

Not the default executor: `asyncio.run` and interpreter exit wait for its threads, so one
hung cleanup hook or health check would hold the whole process. Used by `GracefulShutdown`
(hooks) and `HealthChecker` (sync checks on the async path).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

Handler = Callable[[], Any]
Outcome = tuple[Any, BaseException | None]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _start(fn: Handler, on_done: Callable[[Any, BaseException | None], None]) -> None:
    def target() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
        except BaseException as exc:  # handed to whoever waits for the call
            error = exc
        on_done(result, error)

    name = getattr(fn, "__qualname__", "call")
    threading.Thread(target=target, name=f"bounded-{name}", daemon=True).start()


def in_daemon_thread(fn: Handler) -> asyncio.Future[Any]:
    """A future of the running loop with `fn()`'s result or exception; await it with a bound."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled by the caller's timeout meanwhile
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def on_done(result: Any, error: BaseException | None) -> None:
        # The loop may have closed while `fn` ran; then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    _start(fn, on_done)
    return future


def wait_in_daemon_thread(fn: Handler, bound: float) -> tuple[bool, BaseException | None]:
    """Run `fn` in a daemon thread and wait at most `bound`: (finished in time, its error)."""
    done = threading.Event()
    outcome: list[BaseException | None] = [None]

    def on_done(_: Any, error: BaseException | None) -> None:
        outcome[0] = error
        done.set()

    _start(fn, on_done)
    return done.wait(bound), outcome[0]
