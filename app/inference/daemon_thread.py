"""Blocking work the drain must not wait for: on a daemon thread of its own.

`asyncio.to_thread` runs work in the loop's default executor, whose threads `asyncio.run` joins
when the loop closes, without a bound on Python 3.11: a SIGTERM during a long model load or a
stalled registry read (S3 retrying for minutes) kept the process up until the work ended or the
kubelet killed it. Awaited here and cancelled, the work is abandoned instead: a result that
still arrives goes to `abandon` (a loaded model is released, never leaked).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _ignore(result: object) -> None:
    pass


async def on_daemon_thread(
    work: Callable[[], T], *, name: str, abandon: Callable[[T], None] = _ignore
) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            if error is None:  # off the loop: releasing a loaded model takes a while
                threading.Thread(target=abandon, args=(result,), name=name, daemon=True).start()
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task, raised there
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop has closed: nobody will take the result
            if error is None:
                abandon(result)  # type: ignore[arg-type]

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
