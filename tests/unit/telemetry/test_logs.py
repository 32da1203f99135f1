"""The log formats: one JSON object per line, `extra=` fields at the top level, or a console
line with them as key=value pairs."""

from __future__ import annotations

import io
import json
import logging
import re
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from app.telemetry.logs import (
    BatchedStreamHandler,
    JSONFormatter,
    configure_logging,
    log_fields,
)


def record(message: str, *, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("frameworm.access", logging.INFO, __file__, 1, message, None, exc_info)
    made.__dict__.update(extra)
    return made


def test_a_record_is_one_json_line_with_its_extra_fields() -> None:
    line = JSONFormatter().format(record("request", request_id="r1", status=200, _private=1))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.keys() == {"timestamp", "level", "logger", "message", "request_id", "status"}
    assert (entry["level"], entry["logger"], entry["status"]) == ("info", "frameworm.access", 200)
    assert entry["timestamp"].endswith("+00:00")


def test_values_json_cannot_hold_are_written_as_text_and_exceptions_in_one_field() -> None:
    entry = json.loads(JSONFormatter().format(record("failed", exc=True, path=Path("/x"))))
    assert entry["path"] == "/x"
    assert "ValueError: boom" in entry["exception"]


@pytest.fixture
def logging_restored() -> Iterator[None]:
    root, names = logging.getLogger(), ("uvicorn", "uvicorn.error", "uvicorn.access")
    saved = (root.handlers[:], root.level, [logging.getLogger(n).__dict__.copy() for n in names])
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()  # stops a BatchedStreamHandler's flush thread
        root.handlers, root.level = saved[0], saved[1]
        for name, state in zip(names, saved[2], strict=True):
            logging.getLogger(name).__dict__.update(state)


def test_uvicorn_logs_through_the_one_json_handler_without_its_access_line(
    logging_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "info")
    logging.getLogger("uvicorn.error").info("Uvicorn running")
    logging.getLogger("uvicorn.access").info("GET / 200")
    logging.getLogger().handlers[0].flush()  # what the flush thread does every 0.2 s
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["Uvicorn running"]


CONSOLE_LINE = re.compile(r"\S+ \S+ (?P<level>\w+) +(?P<logger>\S+): (?P<rest>.*)")
CONSOLE_FIELD = re.compile(r' (\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def console_fields(line: str) -> tuple[str, str, dict[str, str]]:
    """A console line's level, logger and fields (quoted values read back as JSON strings)."""
    head = CONSOLE_LINE.fullmatch(line)
    assert head is not None, line
    fields = {
        key: json.loads(value) if value.startswith('"') else value
        for key, value in CONSOLE_FIELD.findall(head["rest"])
    }
    return head["level"], head["logger"], fields


def test_console_lines_carry_the_fields_json_lines_carry(
    logging_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console format printed only the message: "INFO frameworm.access: request", without
    request id, status, route or latency, and an auth failure without its reason."""
    configure_logging("console", "info")
    access = {"request_id": "ab12", "status": 200, "route": "/v2/models/{name}/infer"}
    log_fields(logging.getLogger("frameworm.access"), logging.INFO, "request", access)
    odd = {"reason": 'said "no"\nthen = left', "empty": "", "version": None, "_private": 1}
    logging.getLogger("frameworm.auth").warning("authentication failed", extra=odd)
    logging.getLogger().handlers[0].flush()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # a value's newline stays escaped: one record, one line
    assert console_fields(lines[0]) == (
        "INFO",
        "frameworm.access",
        {"request_id": "ab12", "status": "200", "route": "/v2/models/{name}/infer"},
    )
    assert console_fields(lines[1]) == (
        "WARNING",
        "frameworm.auth",
        {"reason": 'said "no"\nthen = left', "empty": "", "version": "None"},
    )
    assert lines[1].split(": ", 1)[1].startswith("authentication failed reason=")


def test_a_console_line_s_exception_follows_its_fields(
    logging_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("console", "info")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("frameworm.app").exception("failed", extra={"request_id": "r1"})
    logging.getLogger().handlers[0].flush()
    first, *traceback = capsys.readouterr().out.splitlines()
    assert first.endswith(" ERROR   frameworm.app: failed request_id=r1")
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: boom"


class CountingStream(io.StringIO):
    """Counts writes and flushes, as a stdout that writes through (PYTHONUNBUFFERED) would
    make each write a system call."""

    writes = 0
    flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_lines_are_written_in_batches_errors_at_once_and_the_rest_on_close() -> None:
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, interval_s=3600)  # no timed flush in this test
    logger = logging.getLogger("frameworm.test.batched")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.INFO
    for i in range(100):
        logger.info("line %d", i)
    time.sleep(0.05)
    assert (stream.getvalue(), stream.writes, stream.flushes) == ("", 0, 0)  # all pending
    logger.error("bad")  # wakes the writer at once
    expected = "".join(f"line {i}\n" for i in range(100)) + "bad\n"
    assert wait_for(lambda: stream.getvalue() == expected)
    assert (stream.writes, stream.flushes) == (1, 1)  # 101 lines, one write
    logger.info("last")
    handler.close()
    assert stream.getvalue().endswith("bad\nlast\n")
    assert (stream.writes, stream.flushes) == (2, 2)


def test_lines_past_the_pending_limit_are_written_without_waiting_for_the_interval() -> None:
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, interval_s=3600, max_pending=10)
    try:
        for i in range(10):
            handler.write_line(f"line {i}")
        assert wait_for(lambda: stream.getvalue() == "".join(f"line {i}\n" for i in range(10)))
    finally:
        handler.close()


def test_a_stuck_stream_never_blocks_the_logging_thread_and_drops_are_reported() -> None:
    # stdout that nobody reads (a stalled pipe): the writer blocks, the caller must not.
    released = threading.Event()

    class StuckStream(io.StringIO):
        def write(self, text: str) -> int:
            released.wait(10)
            return super().write(text)

    stream = StuckStream()
    handler = BatchedStreamHandler(stream, interval_s=0.01, max_pending=10)
    handler.setFormatter(JSONFormatter())
    try:
        handler.write_line("first")  # taken by the writer, which then blocks in write()
        assert wait_for(lambda: not handler._pending)
        for i in range(10 * BatchedStreamHandler.DROP_FACTOR + 25):
            handler.write_line(f"line {i}")  # returns at once: appended or dropped
        assert len(handler._pending) == 10 * BatchedStreamHandler.DROP_FACTOR
    finally:
        released.set()
        handler.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "first" and lines[1] == "line 0"
    dropped = json.loads(lines[-1])
    assert (dropped["level"], dropped["logger"]) == ("warning", "frameworm.logs")
    assert dropped["message"] == "25 log line(s) dropped: the log stream was not taking them"


def test_logging_s_exit_hook_cannot_deadlock_with_the_writer() -> None:
    """logging.shutdown flushes and closes each handler holding the handler's lock. A writer
    that had started a batch then waited for that lock, and the exit hung for good."""
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, interval_s=3600, max_pending=1)

    def exit_hook() -> None:  # what logging.shutdown does with each handler
        handler.acquire()
        try:
            handler.write_line("last")  # wakes the writer, which starts a batch
            time.sleep(0.2)
            handler.flush()
            handler.close()
        finally:
            handler.release()

    exiting = threading.Thread(target=exit_hook, daemon=True)
    exiting.start()
    exiting.join(5)
    assert not exiting.is_alive(), "the exit hook and the writer deadlocked"
    assert stream.getvalue() == "last\n"


def test_a_line_the_stream_cannot_encode_is_escaped_and_the_batch_survives() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    handler = BatchedStreamHandler(stream, interval_s=0.01)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("frameworm.test.ascii")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.INFO
    try:
        logger.info("ok")
        logger.info("path", extra={"path": "/caf\u00e9 \U0001f600"})  # a client's URL
        logger.info("still ok")
        assert wait_for(lambda: raw.getvalue().count(b"\n") == 3)
        logger.info("after")  # the writer thread is still alive
        assert wait_for(lambda: raw.getvalue().count(b"\n") == 4)
    finally:
        handler.close()
    lines = [json.loads(line) for line in raw.getvalue().decode("ascii").splitlines()]
    assert [line["message"] for line in lines] == ["ok", "path", "still ok", "after"]
    assert lines[1]["path"] == "/caf\u00e9 \U0001f600"


class RecordingRaw(io.RawIOBase):
    """A raw stream (a pipe's file descriptor) that records each write system call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(self.writes[-1])


@pytest.mark.parametrize("unbuffered", [True, False])  # PYTHONUNBUFFERED=1, as images set it
def test_each_write_is_whole_lines_within_pipe_buf_so_workers_cannot_splice_them(
    unbuffered: bool,
) -> None:
    """Workers share one stdout pipe; the kernel keeps a write whole only up to PIPE_BUF."""
    raw = RecordingRaw()
    # With -u (PYTHONUNBUFFERED), sys.stdout writes through to the raw file itself.
    buffer = cast(io.BufferedWriter, raw) if unbuffered else io.BufferedWriter(raw)
    stream = io.TextIOWrapper(buffer, encoding="utf-8", write_through=unbuffered)
    handler = BatchedStreamHandler(stream, interval_s=3600)
    lines = [f'{{"i": {i}, "pad": "{"x" * 300}"}}' for i in range(50)]
    lines.insert(20, "y" * 10_000)  # longer than PIPE_BUF: written alone
    lines.insert(21, "\u00e9" * 1900)  # 1900 characters, 3800 bytes: measured in bytes
    for line in lines:
        handler.write_line(line)
    handler.close()
    assert b"".join(raw.writes).decode().split("\n") == [*lines, ""]
    assert len(raw.writes) > 1
    for write in raw.writes:
        assert write.endswith(b"\n")
        assert len(write) <= select.PIPE_BUF or write.count(b"\n") == 1


def test_the_timed_flush_writes_pending_lines_without_new_records() -> None:
    flushed = threading.Event()

    class Stream(io.StringIO):
        def flush(self) -> None:
            if self.getvalue() == "waiting\n":
                flushed.set()

    handler = BatchedStreamHandler(Stream(), interval_s=0.01)
    try:
        handler.write_line("waiting")
        assert flushed.wait(5)
    finally:
        handler.close()


def _json_logger(name: str) -> tuple[logging.Logger, io.StringIO, BatchedStreamHandler]:
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval_s=3600)
    handler.setFormatter(JSONFormatter())
    parent = logging.getLogger(name)
    parent.handlers, parent.propagate, parent.level = [handler], False, logging.INFO
    return logging.getLogger(f"{name}.access"), stream, handler


def test_log_fields_writes_the_line_the_logging_path_writes() -> None:
    logger, stream, handler = _json_logger("frameworm.test.fields")
    fields = {"request_id": "r1", "status": 200, "path": None, "latency_ms": 1.5}
    try:
        log_fields(logger, logging.INFO, "request", fields)
        logger.info("request", extra=fields)
        log_fields(logger, logging.DEBUG, "request", fields)  # below the level: nothing
    finally:
        handler.close()
    fast, slow = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(fast) == list(slow) == ["timestamp", "level", "logger", "message", *fields]
    assert {**fast, "timestamp": None} == {**slow, "timestamp": None}


def test_log_fields_takes_the_logging_path_when_anything_else_would_see_the_record() -> None:
    logger, stream, handler = _json_logger("frameworm.test.others")
    seen: list[logging.LogRecord] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    try:
        logger.addHandler(Spy())  # a second handler on the way
        log_fields(logger, logging.INFO, "request", {"status": 200})
        logger.handlers = []
        logger.addFilter(lambda record: record.__dict__.get("status") != 500)
        log_fields(logger, logging.INFO, "request", {"status": 500})  # filtered out
    finally:
        handler.close()
    assert [r.__dict__["status"] for r in seen] == [200]
    assert stream.getvalue().count("\n") == 1


def test_a_console_value_with_unicode_line_breaks_or_c1_controls_stays_escaped(
    logging_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """json.dumps leaves U+2028, NEL and the C1 controls (a terminal's CSI) raw: a line read by
    splitlines() broke in two, and a CSI reached the operator's terminal."""
    configure_logging("console", "info")
    value = "a\u2028b\x85c\x9bd\x7fe"
    logging.getLogger("frameworm.auth").warning("authentication failed", extra={"who": value})
    logging.getLogger().handlers[0].flush()
    out = capsys.readouterr().out
    assert not any(c in out for c in "\u2028\x85\x9b\x7f"), repr(out)
    assert len(out.splitlines()) == 1
    assert console_fields(out.splitlines()[0])[2] == {"who": value}
