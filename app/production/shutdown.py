"""Graceful shutdown: count in-flight work, run cleanup hooks, every wait bounded.

Two ways to drive it:

* Inside Frameworm's server. The server calls `attach_server(callback)` before the
  application is built; `GracefulShutdown.start()` then hands the instance to that callback and
  never touches signal handlers. At SIGTERM the server calls `begin()`,
  `await wait_for_inflight(...)` and `await run_handlers(...)` as steps of its own drain.
* On its own (no server attached). `start()` installs SIGTERM/SIGINT handlers that flip the
  state and return at once; a background thread waits for in-flight work, runs the hooks and
  then chains to the handler that was installed before (or the default action). A second
  signal during the drain chains at once. Called from a coroutine (a lifespan under uvicorn,
  whose handlers are plain ones), the thread runs the drain on that coroutine's loop.

  A signal an asyncio loop took with `loop.add_signal_handler` (aiohttp, hypercorn) reaches the
  loop through its wakeup fd whatever Python-level handler is installed, so replacing that
  handler would not stop the loop's own shutdown. Called from a coroutine on that loop,
  `start()` replaces the loop's callback instead: the drain runs as a task on that loop (async
  hooks run where the service's objects live), then the loop's saved callback, once; a second
  signal calls it at once. Elsewhere it refuses, saying how to drive the drain from the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from .bounds import check_seconds
from .hooks import Handler, call_bounded, wait_in_daemon_thread
from .loop_signals import LoopCallback, SignalHandler, chain, is_loop_handler, loop_callback

logger = logging.getLogger(__name__)

H = TypeVar("H", bound=Handler)
ServerCallback = Callable[["GracefulShutdown"], None]

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_server_lock = threading.Lock()
_server_callback: ServerCallback | None = None


def attach_server(callback: ServerCallback) -> None:
    """Register the server's drain coordinator; later `start()` calls hand instances to it."""
    global _server_callback
    with _server_lock:
        _server_callback = callback


def detach_server() -> None:
    global _server_callback
    with _server_lock:
        _server_callback = None


def _attached_server() -> ServerCallback | None:
    with _server_lock:
        return _server_callback


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _InflightToken:
    """The object `track_request()` returns: a sync and async context manager."""

    def __init__(self, owner: GracefulShutdown) -> None:
        self._owner = owner

    def __enter__(self) -> _InflightToken:
        self._owner._enter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._owner._exit()

    async def __aenter__(self) -> _InflightToken:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self._owner._exit()


class GracefulShutdown:
    """Drain in-flight work and run cleanup hooks when the process is asked to stop.

    `timeout` bounds the wait for in-flight work; `handler_timeout` bounds each hook (default:
    `timeout`). Hooks run once, in registration order; one that fails or hangs is logged and
    abandoned, and the rest still run.
    """

    def __init__(self, timeout: float = 30, *, handler_timeout: float | None = None) -> None:
        check_seconds(timeout=timeout, handler_timeout=handler_timeout)
        self.timeout = float(timeout)
        self.handler_timeout = float(handler_timeout if handler_timeout is not None else timeout)
        self._lock = threading.Lock()
        self._handlers: list[Handler] = []
        self._inflight = 0
        self._idle = threading.Event()
        self._idle.set()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._shutting_down = False
        self._handlers_started = False
        self._started = False
        self._previous: dict[int, SignalHandler] = {}
        self._loop_previous: dict[int, LoopCallback] = {}
        self._loop_drain: asyncio.Task[None] | None = None  # referenced until done
        self._loop_chained = False
        self._drain_thread: threading.Thread | None = None
        self._exiting = False  # the interpreter's exit is waiting for the drain
        # The loop `start()` was called on, if any: the drain thread runs the drain there.
        self._service_loop: asyncio.AbstractEventLoop | None = None

    # -- registration -------------------------------------------------------------------
    def register_handler(self, fn: Handler) -> None:
        if not callable(fn):
            raise TypeError("a shutdown handler must be callable")
        with self._lock:
            self._handlers.append(fn)

    def on_shutdown(self, fn: H) -> H:
        """Decorator form of `register_handler`; returns the function unchanged."""
        self.register_handler(fn)
        return fn

    # -- in-flight tracking -------------------------------------------------------------
    def track_request(self) -> _InflightToken:
        """Count a unit of work while the block runs (`with` or `async with`)."""
        return _InflightToken(self)

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def _enter(self) -> None:
        with self._lock:
            self._inflight += 1
            self._idle.clear()

    def _exit(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._inflight:
                return
            self._idle.set()
            waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            # The waiter may live on another thread's loop, or a loop that already closed.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future)

    # -- the drain steps ----------------------------------------------------------------
    @property
    def is_shutting_down(self) -> bool:
        with self._lock:
            return self._shutting_down

    def begin(self) -> bool:
        """Flip to shutting down. Idempotent; True only for the call that flipped it."""
        with self._lock:
            if self._shutting_down:
                return False
            self._shutting_down = True
        logger.info("shutdown begun; %d tracked request(s) in flight", self.inflight)
        return True

    async def wait_for_inflight(self, timeout: float | None = None) -> int:
        """Wait until nothing is in flight or `timeout` passes; return how many still are."""
        bound = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._inflight == 0:
                return 0
            self._async_waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, bound)
        except TimeoutError:
            with self._lock:
                if (loop, future) in self._async_waiters:
                    self._async_waiters.remove((loop, future))
        return self._left_after(bound)

    def wait_for_inflight_blocking(self, timeout: float | None = None) -> int:
        """Thread version of `wait_for_inflight` (never call it on an event loop)."""
        bound = self.timeout if timeout is None else timeout
        self._idle.wait(bound)
        return self._left_after(bound)

    def _left_after(self, bound: float) -> int:
        left = self.inflight
        if left:
            logger.warning("%d request(s) still in flight after %.1fs", left, bound)
        return left

    def _take_handlers(self) -> list[Handler]:
        with self._lock:
            if self._handlers_started:
                return []
            self._handlers_started = True
            return list(self._handlers)

    async def run_handlers(self, timeout_per_handler: float | None = None) -> None:
        """Run the hooks once, in order: async ones on this loop, sync ones in a thread.

        An awaitable that a sync hook returns (`lambda: client.aclose()`) is awaited on this
        loop, within the same bound.
        """
        bound = self.handler_timeout if timeout_per_handler is None else timeout_per_handler
        for fn in self._take_handlers():
            name = getattr(fn, "__qualname__", repr(fn))
            try:
                # Never raises what the hook raised (SystemExit included), so the rest still
                # run; a coroutine a sync hook returns is awaited here, on the server's loop.
                _, error = await call_bounded(fn, bound)
            except TimeoutError:
                logger.error("shutdown handler %s did not finish within %.1fs", name, bound)
                continue
            except Exception as exc:  # its thread could not be started
                error = exc
            if error is not None:
                logger.error("shutdown handler %s failed", name, exc_info=error)

    def run_handlers_blocking(self, timeout_per_handler: float | None = None) -> None:
        """Thread version of `run_handlers`; async hooks run on a private event loop."""
        bound = self.handler_timeout if timeout_per_handler is None else timeout_per_handler
        for fn in self._take_handlers():
            name = getattr(fn, "__qualname__", repr(fn))
            finished, error = wait_in_daemon_thread(fn, bound)
            if not finished:
                logger.error("shutdown handler %s did not finish within %.1fs", name, bound)
            elif error is not None:
                logger.error("shutdown handler %s failed", name, exc_info=error)

    # -- standalone mode ----------------------------------------------------------------
    def start(self) -> None:
        """Join the attached server's drain, or install chaining signal handlers.

        Without a server, call it from the main thread (Python only allows signal handlers
        there). Idempotent.
        """
        with self._lock:
            if self._started:
                return
            self._started = True
        server = _attached_server()
        if server is not None:
            server(self)
            return
        try:
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError(
                    "GracefulShutdown.start() needs the main thread without a server"
                )
            # Decide for every signal before touching any: a refusal changes nothing.
            taken = {sig: loop_callback(sig) for sig in SIGNALS}
            for sig, callback in taken.items():
                if callback is None and is_loop_handler(signal.getsignal(sig)):
                    raise RuntimeError(
                        f"{signal.Signals(sig).name} is handled by an asyncio event loop "
                        "(loop.add_signal_handler), which shuts down on it whatever handler "
                        "start() installs: call start() from a coroutine running on that loop, "
                        "or from the loop's own handler call begin(), await "
                        "wait_for_inflight() and await run_handlers() before shutting down"
                    )
        except RuntimeError:
            with self._lock:
                self._started = False
            raise
        with contextlib.suppress(RuntimeError):  # no loop running: the drain stays in its thread
            self._service_loop = asyncio.get_running_loop()
        for sig, callback in taken.items():
            if callback is not None:
                self._loop_previous[sig] = callback
                callback[0].add_signal_handler(sig, self._on_loop_signal, sig)
            else:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)

    def _on_loop_signal(self, signum: int) -> None:
        # On the loop, in place of the callback it had. The drain is a task on that loop, so
        # async hooks run where the service's objects live; the loop's own callback (its
        # shutdown) follows it, once, or at once on a second signal.
        if self._loop_drain is not None:
            self._chain_loop_once(signum)
            return
        self.begin()
        logger.info("received %s; draining", signal.Signals(signum).name)
        self._loop_drain = asyncio.get_running_loop().create_task(self._drain_on_loop(signum))

    async def _drain(self) -> None:
        await self.wait_for_inflight(self.timeout)
        await self.run_handlers(self.handler_timeout)

    async def _drain_on_loop(self, signum: int) -> None:
        started = time.monotonic()
        await self._drain()
        logger.info("drain finished in %.1fs", time.monotonic() - started)
        self._chain_loop_once(signum)

    def _chain_loop_once(self, signum: int) -> None:
        if self._loop_chained:
            return
        self._loop_chained = True
        _, callback, args = self._loop_previous[signum]
        callback(*args)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs on the main thread: only flip state and start the drain thread; waiting here
        # would block the very loop that has to finish the in-flight work.
        if self._drain_thread is not None:
            # A second signal (an impatient operator) or the re-delivery after the drain: the
            # process's exit no longer waits for the drain.
            atexit.unregister(self._finish_drain_at_exit)
            self._chain(signum, frame)
            return
        self.begin()
        logger.info("received %s; draining", signal.Signals(signum).name)
        self._drain_thread = threading.Thread(
            target=self._drain_then_chain, args=(signum,), name="graceful-shutdown", daemon=True
        )
        self._drain_thread.start()
        # With `start()` at import, uvicorn takes the signal first, stops, re-raises it here and
        # returns from `uvicorn.run`: the program ends, and its exit must wait for the drain.
        atexit.register(self._finish_drain_at_exit)

    def _finish_drain_at_exit(self) -> None:
        self._exiting = True  # the drain's re-delivered signal comes during this join
        self.join(self._drain_bound())

    def _drain_bound(self) -> float:
        """The longest a whole drain may take: in-flight work, then each hook, and a margin."""
        return self.timeout + len(self._handlers) * self.handler_timeout + 1.0

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a signal-started drain to finish; True when none is running any more."""
        thread = self._drain_thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _drain_then_chain(self, signum: int) -> None:
        started = time.monotonic()
        loop = self._service_loop
        if loop is not None and loop.is_running():
            self._drain_on(loop)
        else:
            self.wait_for_inflight_blocking(self.timeout)
            self.run_handlers_blocking(self.handler_timeout)
        logger.info("drain finished in %.1fs", time.monotonic() - started)
        # Re-deliver to the main thread: the chained handler must run there (default SIGINT
        # raises KeyboardInterrupt in it), and our handler now sees the drain as done.
        signal.pthread_kill(threading.main_thread().ident or 0, signum)

    def _drain_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """The drain on the service's loop, where its async clients live; waited for here."""
        try:
            asyncio.run_coroutine_threadsafe(self._drain(), loop).result(self._drain_bound())
        except Exception as exc:  # the loop stopped or stalled: chain on regardless
            logger.error("drain on the service's loop did not finish (%s)", type(exc).__name__)

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        chain(self._previous.get(signum, signal.SIG_DFL), signum, frame, exiting=self._exiting)

    def stop(self) -> None:
        """Put back the signal handlers `start()` replaced (main thread only)."""
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        for sig, (loop, callback, args) in self._loop_previous.items():
            handle = getattr(loop, "_signal_handlers", {}).get(sig)
            if not loop.is_closed() and getattr(handle, "_callback", None) == self._on_loop_signal:
                loop.add_signal_handler(sig, callback, *args)
        self._loop_previous.clear()
        self._loop_drain, self._loop_chained = None, False
        self._service_loop = None
        atexit.unregister(self._finish_drain_at_exit)
        with self._lock:
            self._started = False
