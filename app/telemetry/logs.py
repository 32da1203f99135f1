"""Logging: one JSON object per line on stdout (or readable console lines), uvicorn's too."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, Any, Literal

import orjson

FLUSH_INTERVAL_S = 0.2
MAX_PENDING_LINES = 1024  # about 400 KB of access-log lines

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
        entry = self.head(record.created, record.levelname, record.name, record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()

    def head(self, created: float, level: str, logger: str, message: str) -> dict[str, Any]:
        """The fields every line starts with."""
        return {
            "timestamp": self._timestamp(created),
            "level": level.lower(),
            "logger": logger,
            "message": message,
        }

    def _timestamp(self, created: float) -> str:
        """ISO 8601 in UTC with milliseconds; the part up to the second is made once a second."""
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes its lines in batches, not one write per record.

    The lines wait in the handler and go to the stream together, in one write: every
    `interval_s`, past `max_pending` lines, at once for a warning or worse, and on `close()`
    (so logging's exit hook writes what is left). Relying on the stream's own buffer is not
    enough: with PYTHONUNBUFFERED=1, as container images set it (this one too), stdout writes
    through, and an access-log line per request was a write system call per request, on the
    core that also runs the model. Lines are written whole and in order.
    """

    def __init__(
        self,
        stream: IO[str],
        interval_s: float = FLUSH_INTERVAL_S,
        max_pending: int = MAX_PENDING_LINES,
    ) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._max_pending = max_pending
        self._stop_flushing = threading.Event()
        self._interval_s = interval_s
        threading.Thread(
            target=self._flush_regularly, name="frameworm-log-flush", daemon=True
        ).start()

    def write_line(self, line: str) -> None:
        """A line formatted elsewhere (see `log_fields`), written with the next batch."""
        with self.lock or contextlib.nullcontext():
            self._pending.append(line)
            if len(self._pending) >= self._max_pending:
                self._write_pending()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._write_pending()
            self.stream.flush()

    def close(self) -> None:
        self._stop_flushing.set()
        with contextlib.suppress(ValueError, OSError):  # a stream already closed
            self.flush()
        super().close()

    def _write_pending(self) -> None:
        """Under the lock: the pending lines, in one write."""
        if self._pending:
            lines, self._pending = self._pending, []
            self.stream.write(self.terminator.join(lines) + self.terminator)

    def _flush_regularly(self) -> None:
        while not self._stop_flushing.wait(self._interval_s):
            try:
                self.flush()
            except (ValueError, OSError):  # the stream was closed under us: nothing to flush
                return


def log_fields(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
    """`logger.log(level, message, extra=fields)` for a line logged on every request.

    When the record would only reach the JSON handler `configure_logging` installs (no handler or
    filter on the way, none on the handler), the line is formatted and written here, exactly as
    that handler would write it, without a LogRecord: a fifth of the cost of the logging path,
    which was the largest part of the access log. Anything else takes the logging path.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _only_json_handler(logger, level)
    if handler is None or not isinstance(handler.formatter, JSONFormatter):
        logger.log(level, message, extra=fields)
        return
    entry = handler.formatter.head(time.time(), logging.getLevelName(level), logger.name, message)
    entry.update(fields)
    try:
        handler.write_line(orjson.dumps(entry, default=str).decode())
    except Exception:
        logger.log(level, message, extra=fields)  # let logging report the failure its way


def _only_json_handler(logger: logging.Logger, level: int) -> BatchedStreamHandler | None:
    """The handler a record of `logger` at `level` reaches, when that is only ours, unfiltered.

    Mirrors `Logger.handle` and `callHandlers`: the logger's own filters, then every handler up
    the chain (until `propagate` is off) whose level admits the record.
    """
    if logger.disabled or logger.filters:
        return None
    reached: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        reached += [h for h in current.handlers if level >= h.level]
        if not current.propagate:
            break
        current = current.parent
    only = reached[0] if len(reached) == 1 else None
    if isinstance(only, BatchedStreamHandler) and not only.filters:
        return only
    return None


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
