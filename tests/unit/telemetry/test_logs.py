"""The JSON log format: one object per line, `extra=` fields at the top level."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.telemetry.logs import JSONFormatter, configure_logging


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
