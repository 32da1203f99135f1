"""Per-thread CPU of a server across the measured run (tests/load/bench.py), and its table."""

from __future__ import annotations

import os
import threading
import time

from tests.load.bench import ThreadCpu, thread_cpu_s
from tests.load.report import ServerRow, WrkResult, render_report


def spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_thread_cpu_tells_the_main_thread_from_the_others() -> None:
    spun, measured = threading.Event(), threading.Event()

    def work() -> None:
        spin(0.3)
        spun.set()
        measured.wait(10)  # alive when measured: a thread that has ended leaves /proc

    cpu = ThreadCpu(os.getpid())
    cpu.start()
    worker = threading.Thread(target=work)
    worker.start()
    assert spun.wait(10)
    spin(0.1)  # this test runs on the main thread: the process's own id
    try:
        split = cpu.per_request_ms(requests=100)
    finally:
        measured.set()
        worker.join()

    assert split is not None
    main_ms, other_ms = split
    # 0.3 s on the worker thread and about 0.1 s here over 100 "requests", at 10 ms ticks.
    assert 2.0 <= other_ms <= 4.0
    assert 0.5 <= main_ms <= 2.0


def test_no_split_without_a_start_or_requests_or_process() -> None:
    assert ThreadCpu(os.getpid()).per_request_ms(100) is None  # never started
    started = ThreadCpu(os.getpid())
    started.start()
    assert started.per_request_ms(0) is None
    assert thread_cpu_s(2**22 + 12345) == {}  # no such process


def test_the_report_has_a_cpu_table_for_the_rows_that_measured_it() -> None:
    result = WrkResult(6000, 10_000_000, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0)
    rows = [
        ServerRow(1, "cnn-batching", 64, result, 0, 0, 1, "", (0.49, 0.87)),
        ServerRow(1, "torchserve-cnn", 64, result, 0, 0, 3),
    ]
    text = render_report({}, rows, [], [], {})
    assert "### Server CPU per request" in text
    assert "| cnn-batching | 64 | 0.490 | 0.870 | 1.360 |" in text
    assert "| torchserve-cnn | 64 | 0." not in text
    assert "CPU ms/request: loop 0.490, other 0.870" in rows[0].one_line()
