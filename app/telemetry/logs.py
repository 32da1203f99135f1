"""Logging: one JSON object per line on stdout (or readable console lines), uvicorn's too."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any, Literal

import orjson

FLUSH_INTERVAL_S = 0.2

# Attributes every LogRecord has; anything else was passed through `extra=` and is a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class JSONFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

    def _timestamp(self, created: float) -> str:
        """ISO 8601 in UTC with milliseconds; the part up to the second is made once a second."""
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that flushes every `interval_s`, not after every record.

    An access-log line per request made a write system call per request; flushed in batches it
    costs about half as much. Warnings and errors are flushed at once, `close()` (and so
    logging's exit hook) flushes what is left, and nothing waits longer than `interval_s`.
    """

    def __init__(self, stream: IO[str], interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__(stream)
        self._stop_flushing = threading.Event()
        self._interval_s = interval_s
        threading.Thread(
            target=self._flush_regularly, name="frameworm-log-flush", daemon=True
        ).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._stop_flushing.set()
        with contextlib.suppress(ValueError, OSError):  # a stream already closed
            self.flush()
        super().close()

    def _flush_regularly(self) -> None:
        while not self._stop_flushing.wait(self._interval_s):
            try:
                self.flush()
            except (ValueError, OSError):  # the stream was closed under us: nothing to flush
                return


def configure_logging(fmt: Literal["json", "console"], level: str) -> None:
    """Route the root logger and uvicorn's loggers to one stdout handler in one format."""
    handler = BatchedStreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    # Nothing here prints the caller's file, thread or process: skip collecting them (the
    # logging HOWTO's "Optimization" settings), a good part of a record's cost.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for previous in root.handlers:
        if isinstance(previous, BatchedStreamHandler):
            previous.close()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # Frameworm writes its own access line with the request id; uvicorn's would be a duplicate.
    logging.getLogger("uvicorn.access").disabled = True
