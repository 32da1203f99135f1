"""Signals an asyncio event loop took with `loop.add_signal_handler`, found for GracefulShutdown.

Such a signal reaches the loop through its wakeup fd whatever Python-level handler is set, so
`GracefulShutdown.start()` must replace the loop's callback, not the handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

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
