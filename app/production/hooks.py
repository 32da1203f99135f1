"""Calling hooks and checks with a bound: blocking ones in daemon threads, async ones on the loop.

Not the default executor: `asyncio.run` and interpreter exit wait for its threads, so one
hung cleanup hook or health check would hold the whole process (nor does it grow past its
size, so hung calls would starve the rest). Used by `GracefulShutdown`
(hooks) and `HealthChecker` (checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, cast

Handler = Callable[[], Any]
Outcome = tuple[Any, BaseException | None]


def is_async_callable(fn: object) -> bool:
    """True for a coroutine function, or an object whose type's `__call__` is one."""
    # For an instance, `inspect` only looks at the object itself, not its class's `__call__`.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class _Workers:
    """Daemon threads reused from call to call; a new one only when none is idle.

    A call keeps its thread until it returns, so a hung call never delays another; reusing the
    idle ones spares starting a thread per check per probe. An idle thread exits after
    `idle_s` without work.
    """

    def __init__(self, idle_s: float = 30.0) -> None:
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for work, less the tasks queued for them

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._tasks.put(task)
                return
        # Raises when no thread can be started; then the task was not queued either.
        threading.Thread(target=self._work, args=(task,), name="bounded", daemon=True).start()

    def _work(self, task: Callable[[], None]) -> None:
        while True:
            task()
            with self._lock:
                self._idle += 1
            while True:
                try:
                    task = self._tasks.get(timeout=self.idle_s)
                    break
                except queue.Empty:
                    with self._lock:  # `submit` queues under this lock: no task is on its way
                        if self._tasks.empty():
                            self._idle -= 1
                            return


_workers = _Workers()


def _start(fn: Handler, on_done: Callable[[Any, BaseException | None], None]) -> None:
    name = f"bounded-{getattr(fn, '__qualname__', 'call')}"

    def target() -> None:
        threading.current_thread().name = name
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to whoever waits for the call
            error = exc
        on_done(result, error)

    _workers.submit(target)


class ThreadCall:
    """`fn()` running in a daemon thread from construction on; wait for it with a bound.

    Several waiters may share one run: threads with `wait`, coroutines on any loop with
    `future` (or `call_bounded`).
    """

    def __init__(self, fn: Handler) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._outcome: Outcome = (None, None)
        self._waiters: list[Callable[[], None]] = []
        _start(fn, self._settle)

    def _settle(self, result: Any, error: BaseException | None) -> None:
        with self._lock:
            self._outcome = (result, error)
            self._done.set()
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    def wait(self, bound: float) -> Outcome | None:
        """`(result, error)` once `fn` has returned, or None while it still runs after `bound`."""
        return self._outcome if self._done.wait(bound) else None

    def future(self) -> asyncio.Future[Any]:
        """A future of the running loop with `fn()`'s result or exception; await it with a bound.

        The result is handed over as it is, an awaitable included: only the caller's loop can
        run it (see `call_bounded`).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle() -> None:
            if future.done():  # cancelled by the caller's timeout meanwhile
                return
            result, error = self._outcome
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        def wake() -> None:
            # The loop may have closed while `fn` ran; then nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        with self._lock:
            if not self._done.is_set():
                self._waiters.append(wake)
                return future
        settle()
        return future


def in_daemon_thread(fn: Handler) -> asyncio.Future[Any]:
    """A future of the running loop with `fn()`'s result or exception, run in a daemon thread."""
    return ThreadCall(fn).future()


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def call_bounded(fn: Handler | ThreadCall, bound: float) -> Coroutine[Any, Any, Outcome]:
    """Call `fn`; the coroutine returned gives `(result, None)` or `(None, what fn raised)`.

    Awaiting it raises TimeoutError past `bound`, and the caller's own cancellation; nothing that
    `fn` raises escapes, SystemExit, KeyboardInterrupt and a CancelledError of its own included,
    so one hook or check cannot abort the ones after it (nor, raised in a task, the loop).

    A coroutine function (or an object with `async def __call__`) is awaited on the running
    loop. Anything else may block, so it starts at once in a daemon thread (once this returns,
    that thread exists); a `ThreadCall` already running is waited for instead. When the call
    returns an awaitable (`lambda: client.ping()`), that is awaited on the running loop, within
    the same bound: an async client's futures belong to the loop it was made on, so a private
    loop in the thread would fail or never finish.
    """
    if isinstance(fn, ThreadCall):
        started: asyncio.Future[Any] | None = fn.future()
    else:
        started = None if is_async_callable(fn) else in_daemon_thread(fn)

    async def call() -> Outcome:
        try:
            if started is None:  # a coroutine function, not a ThreadCall
                return await cast(Handler, fn)(), None
            result = await started
            if inspect.isawaitable(result):
                result = await result
            return result, None
        except asyncio.CancelledError as exc:
            if _being_cancelled():  # the timeout or the caller cancelled us: not fn's failure
                raise
            return None, exc
        except BaseException as exc:  # reported, never propagated: see above
            return None, exc

    return _within(call(), bound)


# Calls cancelled at their bound and still running (their clean-up awaits something): kept
# referenced until they end, since the loop holds tasks weakly.
_ABANDONED: set[asyncio.Task[Outcome]] = set()


async def _within(call: Coroutine[Any, Any, Outcome], bound: float) -> Outcome:
    """`call`'s outcome, or TimeoutError at `bound`. Not asyncio.wait_for: past its timeout that
    cancels and then waits for the call to end, however long its clean-up takes (a `finally:
    await client.aclose()` on the dependency that hung), and returns a late result as if in
    time. Here a call past its bound is cancelled and left behind."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=bound)
    except asyncio.CancelledError:
        task.cancel()  # the caller's own cancellation: the call goes with it
        raise
    if task in done:
        return task.result()
    task.cancel()
    _ABANDONED.add(task)
    task.add_done_callback(_ABANDONED.discard)
    raise TimeoutError(f"not done within {bound:g}s")


def _to_completion(fn: Handler) -> Handler:
    def run() -> Any:
        result = fn()
        if inspect.isawaitable(result):
            # No caller loop to hand it to on this path: run it on a private one.
            result = asyncio.run(_awaited(result))
        return result

    run.__qualname__ = getattr(fn, "__qualname__", "call")
    return run


def wait_in_daemon_thread(fn: Handler, bound: float) -> tuple[bool, BaseException | None]:
    """Run `fn` in a daemon thread and wait at most `bound`: (finished in time, its error).

    For callers without an event loop: an awaitable result runs on a private loop there.
    """
    outcome = ThreadCall(_to_completion(fn)).wait(bound)
    return (False, None) if outcome is None else (True, outcome[1])
