"""Signals for GracefulShutdown: chaining to the handler found before, and the signals an
asyncio event loop took with `loop.add_signal_handler`.

Such a signal reaches the loop through its wakeup fd whatever Python-level handler is set, so
`GracefulShutdown.start()` must replace the loop's callback, not the handler.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def chain(previous: SignalHandler, signum: int, frame: FrameType | None, *, exiting: bool) -> None:
    """Hand a signal on to the handler installed before, or to the default action.

    `exiting`: the interpreter is running its exit callbacks. Python's SIGINT handler raises
    KeyboardInterrupt, which there interrupts nothing: it was printed as an ignored exception
    with its traceback and the process exited 0. Ctrl-C's default action ends it instead.
    """
    if previous == signal.SIG_IGN:
        return
    if callable(previous) and not (exiting and previous is signal.default_int_handler):
        previous(signum, frame)
        return
    # SIG_DFL, or a handler installed outside Python: restore and re-raise the default.
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


# The loop, and the callback it had for the signal with its arguments.
LoopCallback = tuple[asyncio.AbstractEventLoop, Callable[..., Any], tuple[Any, ...]]


def loop_callback(sig: int) -> LoopCallback | None:
    """The running loop's callback for `sig` if it took the signal with add_signal_handler.

    asyncio keeps no public record of it: its Unix loop holds a Handle per signal in
    `_signal_handlers`. A loop that keeps them elsewhere (uvloop) gives None.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    handlers = getattr(loop, "_signal_handlers", None)
    handle = handlers.get(sig) if isinstance(handlers, dict) else None
    callback = getattr(handle, "_callback", None)
    args = getattr(handle, "_args", None)
    if handle is None or getattr(handle, "_cancelled", False) or not callable(callback):
        return None
    return loop, callback, tuple(args or ())


def is_loop_handler(handler: object) -> bool:
    """Whether the Python-level handler is an event loop's placeholder: the signal really goes
    to that loop through its wakeup fd (asyncio's `_sighandler_noop`, uvloop's own method)."""
    if getattr(handler, "__name__", None) == "_sighandler_noop":
        return getattr(handler, "__module__", "").startswith("asyncio")
    return isinstance(getattr(handler, "__self__", None), asyncio.AbstractEventLoop)
