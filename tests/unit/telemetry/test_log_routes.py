"""`log_fields` remembers where a logger's records go; any later change to the logging
configuration on the way is honoured at the next line, as `logger.log` would honour it."""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Callable

import pytest

from app.telemetry.logs import BatchedStreamHandler, JSONFormatter, log_fields


class Spy(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record)


def _no(record: logging.LogRecord) -> bool:
    return False


def _top(logger: logging.Logger) -> logging.Logger:
    assert logger.parent is not None
    return logger.parent


def _logger_made_between(logger: logging.Logger, ours: BatchedStreamHandler, spy: Spy) -> None:
    logging.getLogger(logger.name.removesuffix(".access")).addHandler(spy)  # becomes its parent


# What is changed after the first line, whether the spy then sees the second line, and whether
# our handler writes it.
Change = Callable[[logging.Logger, BatchedStreamHandler, Spy], None]
CHANGES: dict[str, tuple[Change, bool, bool]] = {
    "a handler added to the logger": (lambda log, ours, spy: log.addHandler(spy), True, True),
    "a handler added up the chain": (lambda log, ours, spy: _top(log).addHandler(spy), True, True),
    "the handlers replaced": (
        lambda log, ours, spy: setattr(_top(log), "handlers", [spy]),
        True,
        False,
    ),
    "a logger made in between": (_logger_made_between, True, True),
    "our handler's level raised": (
        lambda log, ours, spy: ours.setLevel(logging.WARNING),
        False,
        False,
    ),
    "a filter on our handler": (lambda log, ours, spy: ours.addFilter(_no), False, False),
    "a filter on the logger": (lambda log, ours, spy: log.addFilter(_no), False, False),
    "propagation turned off": (
        lambda log, ours, spy: setattr(log, "propagate", False),
        False,
        False,
    ),
}
_names = itertools.count()


@pytest.mark.parametrize(("change", "spy_sees", "ours_writes"), CHANGES.values(), ids=CHANGES)
def test_a_change_to_the_logging_configuration_is_honoured_at_the_next_line(
    change: Change, spy_sees: bool, ours_writes: bool
) -> None:
    name = f"frameworm.test.routes.{next(_names)}"
    stream = io.StringIO()
    ours = BatchedStreamHandler(stream, interval_s=3600)
    ours.setFormatter(JSONFormatter())
    top = logging.getLogger(name)
    top.handlers, top.propagate, top.level = [ours], False, logging.INFO
    logger = logging.getLogger(f"{name}.between.access")
    spy = Spy()
    try:
        log_fields(logger, logging.INFO, "request", {"n": 1})  # taken straight to our handler
        change(logger, ours, spy)
        log_fields(logger, logging.INFO, "request", {"n": 2})
    finally:
        ours.close()
    assert [r.__dict__["n"] for r in spy.seen] == ([2] if spy_sees else [])
    assert stream.getvalue().count("\n") == (2 if ours_writes else 1)
