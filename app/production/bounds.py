"""Checks of the numbers the building blocks are built with: a NaN, an infinity or a value past
what a thread can wait passed `<= 0` checks and broke them later (a drain whose wait raised
OverflowError in its thread and never chained the signal; a limiter allowing everything)."""

from __future__ import annotations

import math
import threading


def check_seconds(**durations: float | None) -> None:
    """Each a positive, finite number of seconds a thread can wait (None: not given)."""
    for name, value in durations.items():
        if value is not None and not 0 < value <= threading.TIMEOUT_MAX:  # NaN fails too
            raise ValueError(
                f"{name} must be a positive number of seconds, at most {threading.TIMEOUT_MAX:g}"
            )


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive, finite number")
