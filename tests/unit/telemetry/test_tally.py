"""Tallies: what a flush adds to prometheus_client's series is what observing each value there
would have added, in one process and in the shared files of several workers."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client import generate_latest as generate_text
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from app.telemetry.metrics import LATENCY_BUCKETS, Metrics
from app.telemetry.tally import Tallies

# Every bound exactly (a value on a bound is in that bucket), between bounds, past the last
# finite bound, zero and a negative size; then random ones.
EDGES = [*LATENCY_BUCKETS, *(b * 1.5 for b in LATENCY_BUCKETS), 0.0, -1.0, 1e9]
VALUES = EDGES + [random.Random(7).expovariate(20) for _ in range(500)]


def series(kind: str) -> tuple[CollectorRegistry, Any]:
    registry = CollectorRegistry()
    made: dict[str, Any] = {
        "counter": lambda: Counter("c", "c", ["l"], registry=registry),
        "summary": lambda: Summary("s", "s", ["l"], registry=registry),
        "histogram": lambda: Histogram("h", "h", ["l"], buckets=LATENCY_BUCKETS, registry=registry),
        "gauge": lambda: Gauge("g", "g", ["l"], registry=registry),
    }
    return registry, made[kind]().labels("x")


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every sample but the creation timestamps, which differ between two registries."""
    return {
        (sample.name, str(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def same(got: dict[tuple[str, str], float], expected: dict[tuple[str, str], float]) -> bool:
    """Equal counts; sums equal up to the rounding of adding in another order."""
    return got.keys() == expected.keys() and all(
        math.isclose(got[k], expected[k], rel_tol=1e-12) for k in got
    )


def test_a_flushed_histogram_reads_as_one_observed_value_by_value() -> None:
    expected, direct = series("histogram")
    got, child = series("histogram")
    tally = Tallies()
    tallied = tally.histogram(child)
    for i, value in enumerate(VALUES):
        direct.observe(value)
        tallied.observe(value)
        if i % 97 == 0:  # flushed now and then, as a scrape would
            tally.flush()
    tally.flush()
    tally.flush()  # nothing new: adds nothing
    assert same(samples(got), samples(expected))
    assert samples(got)[("h_count", "[('l', 'x')]")] == len(VALUES)


def test_a_flushed_summary_counter_and_gauge_read_as_the_direct_calls() -> None:
    tally = Tallies()
    registries = []
    for kind in ("summary", "counter", "gauge"):
        expected, direct = series(kind)
        got, child = series(kind)
        registries.append((expected, got))
        if kind == "summary":
            summary = tally.summary(child)
            for value in VALUES:
                direct.observe(value)
                summary.observe(value)
        elif kind == "counter":
            counter = tally.counter(child)
            direct.inc(7)
            counter.pending += 7
        else:
            gauge = tally.gauge(child)
            for value in (3, 5, 2):
                direct.set(value)
                gauge.value = value
    tally.flush()
    for expected, got in registries:
        assert same(samples(got), samples(expected))


def test_nan_falls_in_no_bucket_as_in_prometheus_client() -> None:
    expected, direct = series("histogram")
    got, child = series("histogram")
    tally = Tallies()
    tally.histogram(child).observe(math.nan)
    direct.observe(math.nan)
    tally.flush()
    got_samples, expected_samples = samples(got), samples(expected)
    assert math.isnan(got_samples.pop(("h_sum", "[('l', 'x')]")))
    assert math.isnan(expected_samples.pop(("h_sum", "[('l', 'x')]")))
    assert got_samples == expected_samples
    assert got_samples[("h_count", "[('l', 'x')]")] == 0


def test_an_exemplar_reaches_openmetrics_and_its_value_is_counted_once() -> None:
    registry, child = series("histogram")
    tally = Tallies()
    tallied = tally.histogram(child)
    tallied.observe(0.003)
    tallied.observe_with_exemplar(0.004, {"trace_id": "abc"})
    tally.flush()
    text = generate_openmetrics(registry).decode()  # type: ignore[no-untyped-call]
    assert 'h_bucket{l="x",le="0.005"} 2.0 # {trace_id="abc"} 0.004' in text
    assert 'h_count{l="x"} 2.0' in text


def runner(version: str) -> Any:
    return cast(Any, SimpleNamespace(manifest=SimpleNamespace(version=version)))


def test_metrics_render_flushes_the_batchers_series_first() -> None:
    metrics = Metrics("m")
    metrics.admitted(1)
    metrics.admitted(1)
    metrics.admitted(-1)
    metrics.queued(4)
    metrics.batch_done(runner("1.0.0"), 2, 0.02, [0.001, 0.002], ["t1", None])
    metrics.batch_done(runner("2.0.0"), 1, 0.03, [0.004])
    # Nothing reached the series yet: only the tallies hold it.
    assert 'frameworm_batch_size_count{model="m"} 0.0' in generate_text(metrics.registry).decode()
    text = metrics.render("text/plain")[0].decode()
    assert "frameworm_inflight_requests 1.0" in text
    assert 'frameworm_queue_depth{model="m"} 4.0' in text
    assert 'frameworm_batch_size_count{model="m"} 2.0' in text
    assert 'frameworm_batch_size_sum{model="m"} 3.0' in text
    assert 'frameworm_queue_wait_seconds_count{model="m"} 3.0' in text
    for version in ("1.0.0", "2.0.0"):
        labels = f'model="m",version="{version}"'
        assert f"frameworm_inference_duration_seconds_count{{{labels}}} 1.0" in text
    exemplars = metrics.render("application/openmetrics-text")[0].decode()
    assert '# {trace_id="t1"} 0.001' in exemplars  # the sampled request's wait
    assert '# {trace_id="t1"} 0.02' in exemplars  # its batch's forward pass


SEVERAL_WORKERS = """
import sys
from app.telemetry.metrics import Metrics
metrics = Metrics("m")
for value in (0.001, 0.002, 0.5):
    metrics.batch_done(__import__("types").SimpleNamespace(
        manifest=__import__("types").SimpleNamespace(version="1")), 1, value, [value])
metrics.admitted(3)
metrics.flush()
"""


def test_a_flush_writes_into_the_shared_files_of_several_workers(tmp_path: Path) -> None:
    # prometheus_client picks its multiprocess values at import: fresh interpreters, two
    # "workers" writing into one directory, read as /metrics reads it.
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", SEVERAL_WORKERS],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
            timeout=120,
            check=True,
        )
    reading = """
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
print(generate_latest(registry).decode())
"""
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + reading, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert 'frameworm_queue_wait_seconds_count{model="m"} 6.0' in done.stdout
    assert 'frameworm_queue_wait_seconds_bucket{le="0.001",model="m"} 2.0' in done.stdout
    assert 'frameworm_batch_size_sum{model="m"} 6.0' in done.stdout


def test_the_batchers_series_appear_at_the_first_batch_as_before() -> None:
    """Their children are made at the first batch (a `_created` of the app's start, and zeros
    before any batch, would differ from what prometheus_client's own observe gave)."""
    metrics = Metrics("m")
    text = metrics.render("text/plain")[0].decode()
    assert 'frameworm_batch_size_count{model="m"}' not in text
    assert 'frameworm_queue_wait_seconds_count{model="m"}' not in text
    metrics.batch_done(runner("1.0.0"), 1, 0.01, [0.001])
    text = metrics.render("text/plain")[0].decode()
    assert 'frameworm_batch_size_count{model="m"} 1.0' in text
