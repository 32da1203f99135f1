"""Logging: one JSON object per line on stdout (or readable console lines), uvicorn's too."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import operator
import re
import select
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, Literal, NamedTuple

import orjson

FLUSH_INTERVAL_S = 0.2
MAX_PENDING_LINES = 1024  # about 400 KB of access-log lines
PIPE_BUF = select.PIPE_BUF  # the largest pipe write the kernel keeps whole (4096 on Linux)

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


class ConsoleFormatter(logging.Formatter):
    """A readable line: time, level, logger and message, then the record's fields (its `extra=`)
    as key=value pairs, as in the JSON line; the exception, if any, on the lines after.

    A value with a space, quote, `=`, backslash or control character, or an empty one, is
    written as a JSON string, so the fields stay on one line and can be split apart again.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        pairs = [
            f"{key}={_console_value(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        return " ".join([super().formatMessage(record), *pairs])


def _console_value(value: object) -> str:
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    # The standard library's: orjson refuses lone surrogates (a path decoded with
    # surrogateescape), which the handler escapes when the stream cannot take them. It leaves
    # DEL, the C1 controls (a terminal's CSI) and the Unicode line breaks raw: escaped here.
    return _RAW_BREAKS.sub(_unicode_escape, json.dumps(text, ensure_ascii=False))


def _unicode_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


_RAW_BREAKS = re.compile("[\x7f-\x9f\u2028\u2029]")
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]')


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler whose lines are written in batches by a thread of its own.

    Relying on the stream's own buffer is not enough: with PYTHONUNBUFFERED=1, as container
    images set it (this one too), stdout writes through, and an access-log line per request was
    a write system call per request, on the core that also runs the model. So lines wait here
    and the writer thread writes them together: every `interval_s`, at once past `max_pending`
    lines or for a warning or worse, and on `close()` (logging's exit hook calls it).

    The thread that logs (the event loop, for access lines) only appends to a deque. It never
    writes, so a stdout nobody reads (a stalled pipe, a full disk) cannot stop the server: the
    writer blocks instead, and past `max_pending` x DROP_FACTOR waiting lines new ones are
    dropped and counted, and the count is logged once lines flow again. A line the stream cannot
    encode (stdout that is not UTF-8, a client's path with accents) is written with its
    non-ASCII characters as JSON escapes instead of failing the batch. Lines stay whole and in
    order, and a batch is written in pieces of at most PIPE_BUF bytes, so workers sharing one
    stdout pipe never splice their lines.
    """

    DROP_FACTOR = 8

    def __init__(
        self,
        stream: IO[str],
        interval_s: float = FLUSH_INTERVAL_S,
        max_pending: int = MAX_PENDING_LINES,
    ) -> None:
        super().__init__(stream)
        # Appended to by any thread, emptied by the one writing: deque's append and popleft are
        # atomic, so taking a batch needs no lock that a logging thread could hold. (logging's
        # exit hook calls flush and close holding the handler's lock: a writer that then
        # waited for it while holding _write_lock deadlocked the process's exit.)
        self._pending: collections.deque[str] = collections.deque()
        self._max_pending = max_pending
        self._dropped = 0
        self._dropped_lock = threading.Lock()  # held alone, never while taking another
        self._write_lock = threading.Lock()  # one batch at a time reaches the stream
        self._wake = threading.Event()
        self._closing = False
        self._interval_s = interval_s
        self._writer = threading.Thread(
            target=self._write_regularly, name="frameworm-log-flush", daemon=True
        )
        self._writer.start()

    def write_line(self, line: str) -> None:
        """A line formatted elsewhere (see `log_fields`), written with the next batch."""
        pending = self._pending
        if len(pending) >= self._max_pending * self.DROP_FACTOR:
            with self._dropped_lock:
                self._dropped += 1  # the writer is stuck: keep memory bounded
            return
        pending.append(line)
        if len(pending) >= self._max_pending:
            self._wake.set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
            if record.levelno >= logging.WARNING:
                self._wake.set()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write what is pending now, on this thread (it waits for a batch being written)."""
        self._write_pending()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        with contextlib.suppress(ValueError, OSError):  # a stream already closed
            self._write_pending()
        super().close()

    def _take(self) -> tuple[list[str], int]:
        """The lines waiting, oldest first (only the thread holding _write_lock takes)."""
        pending, lines = self._pending, []
        while pending:
            lines.append(pending.popleft())
        with self._dropped_lock:
            dropped, self._dropped = self._dropped, 0
        return lines, dropped

    def _write_pending(self) -> None:
        with self._write_lock:
            lines, dropped = self._take()
            if dropped:
                lines.append(self.format(_dropped_record(dropped)))
            if lines:
                self._write(lines)
            self.stream.flush()

    def _write(self, lines: list[str]) -> None:
        """Whole lines, in writes of at most PIPE_BUF bytes (a longer line alone).

        Workers share one stdout pipe, and the kernel keeps a pipe write whole only up to
        PIPE_BUF bytes: a larger batch could be spliced with another worker's lines, cutting
        JSON lines in two. Each piece is flushed before the next, so a buffered stream hands
        it over in one write too (`_write_pending` flushes the last).
        """
        for n, piece in enumerate(_pieces(lines, len(self.terminator))):
            if n:
                self.stream.flush()
            try:
                self.stream.write(self.terminator.join(piece) + self.terminator)
            except UnicodeEncodeError:
                # Escapes are longer than the characters they stand for: cut them again.
                self._write([_escape_non_ascii(line) for line in piece])

    def _write_regularly(self) -> None:
        while not self._closing:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            try:
                self._write_pending()
            except (ValueError, OSError) as exc:
                if getattr(self.stream, "closed", False):  # closed under us: nothing to write
                    return
                # A full disk, a broken pipe: these lines are lost, later ones may not be.
                sys.stderr.write(f"frameworm: writing log lines failed: {exc!r}\n")


def _pieces(lines: list[str], terminator_bytes: int) -> Iterator[list[str]]:
    """`lines` in order, cut into runs of at most PIPE_BUF bytes as UTF-8, terminators counted;
    a line longer than that is a run of its own."""
    piece: list[str] = []
    size = 0
    for line in lines:
        length = len(line) if line.isascii() else len(line.encode(errors="surrogatepass"))
        length += terminator_bytes
        if piece and size + length > PIPE_BUF:
            yield piece
            piece, size = [], 0
        piece.append(line)
        size += length
    if piece:
        yield piece


def _dropped_record(count: int) -> logging.LogRecord:
    return logging.LogRecord(
        "frameworm.logs",
        logging.WARNING,
        __file__,
        0,
        "%d log line(s) dropped: the log stream was not taking them",
        (count,),
        None,
    )


def _escape_non_ascii(text: str) -> str:
    """Non-ASCII characters as JSON \\u escapes (surrogate pairs beyond the BMP): valid inside
    the JSON strings they can only appear in, and readable in console lines."""
    return _NON_ASCII.sub(_json_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


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

    Worked out by `_route`, then reused while what it read is unchanged: the state of every
    logger on the way and the level and filters of every handler on it. Comparing those takes a
    few comparisons made in C; walking the chain took a hundred bytecodes a request. Logging
    keeps no count of its changes (handlers are added in place), so only looking can tell.
    """
    route = _routes.get((logger, level))
    if route is None or route.seen != (
        list(map(_LOGGER_STATE, route.loggers)),
        list(map(_HANDLER_STATE, route.handlers)),
    ):
        route = _routes[logger, level] = _route(logger, level)
    return route.handler


class _LoggerState(NamedTuple):
    disabled: bool
    filters: list[Any]
    handlers: list[logging.Handler]
    propagate: bool
    parent: logging.Logger | None


class _Route(NamedTuple):
    handler: BatchedStreamHandler | None
    loggers: list[logging.Logger]  # the chain, from the logger up
    handlers: list[logging.Handler]  # every handler on it, whatever its level
    seen: tuple[list[_LoggerState], list[tuple[int, list[Any]]]]  # their state then


_LOGGER_STATE = operator.attrgetter(*_LoggerState._fields)
_HANDLER_STATE = operator.attrgetter("level", "filters")
_routes: dict[tuple[logging.Logger, int], _Route] = {}


def _route(logger: logging.Logger, level: int) -> _Route:
    """Mirrors `Logger.handle` and `callHandlers`: the logger's own filters, then every handler
    up the chain (until `propagate` is off) whose level admits the record.

    The chain is followed in the state kept to compare with, copied first (lists change in
    place), so a change made meanwhile by another thread differs from it, seen at the next call.
    """
    loggers: list[logging.Logger] = []
    states: list[_LoggerState] = []
    current: logging.Logger | None = logger
    while current is not None:
        state = _LoggerState(
            current.disabled,
            list(current.filters),
            list(current.handlers),
            current.propagate,
            current.parent,
        )
        loggers.append(current)
        states.append(state)
        current = state.parent if state.propagate else None
    handlers = [h for state in states for h in state.handlers]
    seen = (states, [(h.level, list(h.filters)) for h in handlers])
    # The rest is read now: anything changed since the copies were taken differs from them.
    reached = [h for h in handlers if level >= h.level]
    only = reached[0] if len(reached) == 1 else None
    if (
        isinstance(only, BatchedStreamHandler)
        and not only.filters
        and not logger.disabled
        and not logger.filters
    ):
        return _Route(only, loggers, handlers, seen)
    return _Route(None, loggers, handlers, seen)


# Loggers of the S3 client, whose DEBUG lines print every request header.
CREDENTIAL_HEADER_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def configure_logging(fmt: Literal["json", "console"], level: str) -> None:
    """Route the root logger and uvicorn's loggers to one stdout handler in one format."""
    handler = BatchedStreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(ConsoleFormatter())
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
    # Their debug lines carry whole request headers: S3's Authorization and the session token.
    for name in CREDENTIAL_HEADER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
    # Frameworm writes its own access line with the request id; uvicorn's would be a duplicate.
    logging.getLogger("uvicorn.access").disabled = True
