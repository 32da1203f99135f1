"""The JSON log format: one object per line, `extra=` fields at the top level."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

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
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["Uvicorn running"]


def test_lines_are_flushed_in_batches_errors_at_once_and_the_rest_on_close() -> None:
    class Stream(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    stream = Stream()
    handler = BatchedStreamHandler(stream, interval_s=3600)  # no timed flush in this test
    logger = logging.getLogger("frameworm.test.batched")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.INFO
    for _ in range(100):
        logger.info("line")
    assert stream.getvalue().count("line\n") == 100
    assert stream.flushes == 0
    logger.error("bad")
    assert stream.flushes == 1
    handler.close()
    assert stream.flushes == 2


def test_the_timed_flush_runs_without_new_records() -> None:
    flushed = threading.Event()

    class Stream(io.StringIO):
        def flush(self) -> None:
            flushed.set()

    handler = BatchedStreamHandler(Stream(), interval_s=0.01)
    try:
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
