"""The benchmark's wrk-output parser and report rendering (tests/load/report.py)."""

from __future__ import annotations

import pytest

from tests.load.report import (
    CHANNELS_LAST,
    AloneRow,
    ColdRow,
    ServerRow,
    WrkResult,
    checks,
    overhead_checks,
    parse_wrk_output,
    render_report,
)

WRK_STDOUT = """Running 5s test @ http://127.0.0.1:8000/infer
  1 threads and 64 connections
  Non-2xx or 3xx responses: 10
Requests/sec:   1000.00
FRAMEWORM_BENCH requests=5010 duration_us=5000000 bytes=123 mean_us=60000.5 max_us=90000 \
p50_us=55000 p90_us=70000 p95_us=75000 p99_us=88000 connect=0 read=1 write=0 timeout=2 non2xx=10
"""


def result(requests: int, duration_s: float, p50_ms: float, non2xx: int = 0) -> WrkResult:
    us = p50_ms * 1000
    return WrkResult(requests, int(duration_s * 1e6), us, us, us, us, us, us, 0, 0, 0, 0, non2xx)


def test_parse_wrk_output_reads_the_done_line() -> None:
    r = parse_wrk_output(WRK_STDOUT)
    # ok: less the 10 non-2xx and the 2 answers past wrk's timeout (no latency for them).
    assert (r.requests, r.non2xx, r.ok, r.socket_errors) == (5010, 10, 4998, 3)
    assert r.rps == pytest.approx(999.6)
    assert (r.p50_us, r.p95_us, r.p99_us) == (55000, 75000, 88000)


@pytest.mark.parametrize(
    "text", ["Running 5s test\n", "FRAMEWORM_BENCH requests=1 duration_us=2\n"]
)
def test_parse_wrk_output_refuses_missing_fields(text: str) -> None:
    with pytest.raises(ValueError, match=r"FRAMEWORM_BENCH|lacks"):
        parse_wrk_output(text)


def test_render_report_tables_and_checks() -> None:
    mib = 1024 * 1024
    rows = [
        ServerRow(1, "cnn-batching", 1, result(500, 5, 2.6), 300 * mib, 0, 1),
        ServerRow(1, "cnn-batching", 64, result(3000, 5, 90), 320 * mib, 0, 1),
        ServerRow(1, "cnn-nobatch", 64, result(1000, 5, 200, non2xx=4), 310 * mib, 290 * mib, 2),
        ServerRow(1, "cnn-nobatch", 16, None, 0, 0, 0, "wrk exited 1"),
    ]
    alone = [AloneRow(1, "cnn", 1, 100, 400.0, 2.4, 2.4)]
    cold = [ColdRow(1, 1, 3.0, 4.5, 200 * mib, 0, 1)]
    text = render_report({"started": "now"}, rows, alone, cold, {"cnn-batching": "32 / 5 ms"})
    assert "| cnn-batching | 64 | 600 | 90.00 | 90.00 | 90.00 | 0 / 0 | 320 |  |" in text
    assert "| cnn-nobatch | 64 | 199 | 200.00 |" in text  # 2xx only: (1000 - 4) / 5 s
    assert "310 (PSS 290, 2 procs)" in text
    assert "wrk exited 1" in text
    assert "**3.01x** (target >= 2x: holds)" in text
    assert "**+0.20 ms** (target <= +0.5 ms: holds)" in text
    assert "| 1 | 3.00 | 4.50 | 200 |  |" in text
    assert "## Run 1" in text and "## Run 2" not in text


def test_overhead_checks_compare_the_means_of_alternated_rows() -> None:
    def row(config: str, requests: int) -> ServerRow:
        return ServerRow(1, config, 64, result(requests, 10, 100), 0, 0, 1)

    rows = [
        row("cnn-batching", 5000),
        row("cnn-everything-on", 4500),
        row("cnn-batching", 6000),
        row("cnn-everything-on", 5500),
        row("cnn-metrics", 5000),
        row("cnn-metrics-tracing", 4000),
    ]
    lines = overhead_checks(rows)
    assert lines[0].startswith("- cnn-everything-on vs cnn-batching at 64 connections")
    assert "mean of 2 / 2 rows: **-9.1%** (budget -10%: holds)" in lines[0]
    assert "**-9.1%** (budget -5%: does NOT hold)" in lines[1]  # metrics vs the same baseline
    assert "**-20.0%** (budget -10%: does NOT hold)" in lines[2]  # tracing vs metrics
    assert len(lines) == 3


def test_the_one_connection_check_compares_with_the_fastest_layout_of_the_model() -> None:
    rows = [ServerRow(1, "cnn-batching", 1, result(500, 5, 2.6), 0, 0, 1)]
    alone = [
        AloneRow(1, "cnn", 1, 100, 400.0, 2.4, 2.4),
        AloneRow(1, "cnn", 1, 100, 450.0, 2.2, 2.2, variant=CHANNELS_LAST),
        AloneRow(1, "cnn", 1, 100, 900.0, 1.1, 1.1, variant="eager float16"),  # not served
    ]
    [line] = checks(rows, alone, run=1)
    assert "the model alone 2.20 ms/sample: **+0.40 ms**" in line


def test_answers_past_wrk_s_timeout_are_no_successes_and_the_percentiles_are_bounds() -> None:
    """wrk counts an answer slower than its timeout as a request but leaves it out of the
    percentiles: it was counted in req/s, its latency nowhere."""
    slow = WrkResult(10, 20_000_000, 9e6, 9e6, 5e6, 6e6, 7e6, 8e6, 0, 0, 0, 3, 1)
    assert slow.ok == 6
    cells = ServerRow(1, "plain-fastapi-cnn", 64, slow, 0, 0, 1).cells()
    assert cells[3:6] == [">= 5000.00", ">= 7000.00", ">= 8000.00"]
    assert ServerRow(1, "x", 64, result(10, 1, 2.0), 0, 0, 1).cells()[3] == "2.00"


def test_the_one_connection_check_leaves_out_the_result_cache_workloads() -> None:
    """90% of the cache workload's requests run no model: it was judged against the model."""
    rows = [ServerRow(1, "cnn-cache-on", 1, result(500, 5, 0.9), 0, 0, 1)]
    assert checks(rows, [AloneRow(1, "cnn", 1, 100, 400.0, 3.7, 3.7)], run=1) == []
