"""The fixed-rate, soak and result-cache parts of the benchmark report (tests/load/report.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.load.fixed_rate import cpu_times, stolen_share
from tests.load.openloop import Latency, Summary, Window
from tests.load.report import (
    FixedRateRow,
    ServerRow,
    SoakMinute,
    SoakRow,
    WrkResult,
    render_report,
    soak_verdict,
)

MIB = 1024 * 1024


def summary(p99_ms: float = 40.0, non2xx: dict[int, int] | None = None, errors: int = 0) -> Summary:
    return Summary(
        offered_rps=288.0,
        duration_s=600.0,
        scheduled=172_800,
        ok=172_800 - sum((non2xx or {}).values()) - errors,
        non2xx=non2xx or {},
        errors=errors,
        timeouts=0,
        achieved_rps=287.5,
        latency=Latency(172_800, 12_000, 25_000, p99_ms * 1000, 80_000, 120_000),
        lag_p99_us=1_500,
        lag_max_us=3_000,
        connections=128,
        max_busy=20,
        cpu_s=10.0,
        wall_s=601.0,
    )


def minute(
    index: int, p99_ms: float, rss_mib: int, errors: int = 0, stolen: float | None = None
) -> SoakMinute:
    window = Window(
        index,
        (index - 1) * 60.0,
        index * 60.0,
        17_280,
        17_280,
        0,
        errors,
        288.0,
        12_000,
        p99_ms * 1e3,
    )
    return SoakMinute(window, rss_mib * MIB, stolen)


def test_fixed_rate_row_and_section() -> None:
    row = FixedRateRow(1, "cnn-everything-on", 360.0, 0.8, summary(non2xx={503: 3}), 350 * MIB)
    text = render_report({"started": "now"}, [], [], [], {}, fixed_rows=[row])
    assert "### Fixed rate (open loop)" in text
    assert (
        "| cnn-everything-on | 360 | 288 (80%) | 288 | 12.00 | 25.00 | 40.00 | 80.00 | 120.00 | "
        "503: 3 | 0 / 0 | 1.50 (20/128) | 350 |  |"
    ) in text
    assert "## Run 1" in text
    missing = FixedRateRow(2, "cnn-everything-on", 0, 0.8, None, 0, "not ready")
    text = render_report({}, [], [], [], {}, fixed_rows=[missing])
    assert "| cnn-everything-on | — | — |" in text and "not ready |" in text
    assert "fixed rate" in row.one_line() and "p99.9 80.00" in row.one_line()


def test_soak_verdict_holds() -> None:
    minutes = [minute(1, 40, 400), minute(2, 45, 405), minute(3, 38, 410)]
    v = soak_verdict(minutes, failed=0)
    assert v.rss_growth == pytest.approx(0.025)
    assert v.median_p99_us == pytest.approx(40_000)
    assert (v.unsteady, v.p99_steady, v.rss_ok, v.holds) == ((), True, True, True)


@pytest.mark.parametrize(
    ("minutes", "failed", "fails"),
    [
        ([minute(1, 40, 400), minute(2, 40, 400)], 1, "no error"),
        ([minute(1, 40, 400), minute(2, 40, 421)], 0, "RSS growth"),  # +5.25%
        ([minute(1, 40, 400), minute(2, 40, 400), minute(3, 81, 400)], 0, "p99 steady"),
        ([minute(1, 40, 400), minute(2, 40, 400), minute(3, 19, 400)], 0, "p99 steady"),
    ],
)
def test_soak_verdict_fails(minutes: list[SoakMinute], failed: int, fails: str) -> None:
    v = soak_verdict(minutes, failed)
    assert v.holds is False
    failing = [line for line in v.lines() if "does NOT hold" in line and "verdict" not in line]
    assert len(failing) == 1 and fails in failing[0]


def test_one_minute_shows_no_growth_nor_steadiness() -> None:
    v = soak_verdict([minute(1, 40, 400)], failed=0)
    assert (v.rss_growth, v.p99_steady, v.holds) == (None, None, None)
    assert "needs two minutes or more" in "\n".join(v.lines())
    assert soak_verdict([], failed=0).holds is None


def test_a_minute_without_2xx_is_unsteady() -> None:
    quiet = minute(2, 40, 400)
    gone = SoakMinute(Window(2, 60, 120, 100, 0, 0, 100, 0.0, math.nan, math.nan), 0)
    v = soak_verdict([minute(1, 40, 400), gone, quiet], failed=100)
    assert v.unsteady == (2,) and v.rss_growth == 0 and v.holds is False


def test_soak_section() -> None:
    minutes = (minute(1, 40, 400, stolen=0.012), minute(2, 42, 402))
    row = SoakRow(1, "cnn-everything-on", 411.0, 0.7, minutes, summary(), 420 * MIB)
    text = render_report({}, [], [], [], {}, soak_rows=[row])
    assert "### Soak: `cnn-everything-on` at 70% of capacity" in text
    assert "Capacity (wrk, 64 connections): 411 req/s; offered 288.0 req/s for 10 min" in text
    assert "| 1 | 288.0 | 12.00 | 40.00 | 17280 | 0 | 0 | 400 | 1.2% |" in text
    assert "| 2 | 288.0 | 12.00 | 42.00 | 17280 | 0 | 0 | 402 | - |" in text
    assert "+0.5% from the end of minute 1 to the end (holds)" in text
    assert "within 2x of the median minute's, either way" in text
    assert "- verdict: **holds**" in text
    broken = SoakRow(1, "cnn-everything-on", 0, 0.7, (), None, 0, "wrk exited 1")
    assert "Not measured: wrk exited 1" in render_report({}, [], [], [], {}, soak_rows=[broken])


def wrk(rps: float, p99_ms: float) -> WrkResult:
    us = p99_ms * 1000
    return WrkResult(int(rps * 10), 10_000_000, us, us, us, us, us, us, 0, 0, 0, 0, 0)


def test_cache_checks_compare_on_with_off() -> None:
    rows = [
        ServerRow(1, "cnn-cache-on", 64, wrk(2400, 30), 0, 0, 1),
        ServerRow(1, "cnn-cache-off", 64, wrk(480, 250), 0, 0, 1),
        ServerRow(1, "mlp-cache-on", 64, wrk(1100, 90), 0, 0, 1),
        ServerRow(1, "mlp-cache-off", 64, wrk(1000, 100), 0, 0, 1),
        ServerRow(1, "mlp-cache-on", 1, wrk(700, 2), 0, 0, 1),  # no "off" row at 1: no line
    ]
    text = render_report({}, rows, [], [], {})
    assert (
        "- CNN result cache on vs off, repeated inputs, 64 connections: 2,400 / 480 req/s = "
        "**5.00x**, p99 30.00 vs 250.00 ms"
    ) in text
    assert "MLP result cache on vs off, repeated inputs, 64 connections: 1,100 / 1,000" in text
    assert text.count("result cache on vs off") == 2


def test_stolen_share_is_the_hypervisors_part_of_the_machines_cpu_time() -> None:
    assert stolen_share((100, 10_000), (130, 11_000)) == pytest.approx(0.03)
    assert stolen_share(None, (130, 11_000)) is None
    assert stolen_share((100, 10_000), (100, 10_000)) is None  # no time passed
    now = cpu_times()
    if Path("/proc/stat").exists():  # Linux: steal is the eighth field of the cpu line
        assert now is not None and 0 <= now[0] <= now[1]
