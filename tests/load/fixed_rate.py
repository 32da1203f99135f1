"""bench.py's open-loop measurements, `fixed-rate` and `soak` (generator: openloop.py).

Both start one server configuration like the closed-loop sweep (pinned to core 0, its first
answer checked), measure its capacity with wrk at 64 connections (warm-up, then measured), then
offer a fixed rate, a fraction of that capacity, from this process (pinned to core 1 by
bench.py) over a pool of keep-alive connections:

- `fixed-rate`: 80% of capacity for the measured duration (`--duration`): the latency claim
  of shared/BENCHMARK.md, without coordinated omission.
- `soak`: 70% of capacity for `--soak-minutes`, cut into one-minute windows, with the server's
  RSS at the end of each; the verdict is report.soak_verdict's.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from tests.load import bench
from tests.load.openloop import Summary, Target, run_open_loop, summarize, windows
from tests.load.report import FixedRateRow, ServerRow, SoakMinute, SoakRow, WrkResult

V = TypeVar("V")

FIXED_RATE_FRACTION = 0.8
SOAK_FRACTION = 0.7
CAPACITY_CONNECTIONS = 64
SOAK_CAPACITY_S = 10  # wrk's measured seconds before a soak (at most --duration)
WINDOW_S = 60.0
TIMEOUT_S = 10.0  # per request, like wrk's --timeout


class Unavailable(RuntimeError):
    """The server did not start, get ready, or answer right."""


@dataclass(frozen=True)
class Server:
    name: str
    config: bench.ServerConfig
    base: str
    port: int
    infer_path: str
    proc: subprocess.Popen[bytes]
    sampler: bench.MemorySampler

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        """The process tree's RSS now, in bytes."""
        return sum(
            bench._kib_field(f"/proc/{pid}/status", "VmRSS:")
            for pid in bench.process_tree(self.proc.pid)
        )


@contextlib.contextmanager
def serving(
    run: int,
    name: str,
    opts: bench.Options,
    ws: bench.Workspace,
    body_file: Path,
    expected: Mapping[str, np.ndarray],
    what: str,
) -> Iterator[Server]:
    """The configuration's server, ready and its first answer checked; Unavailable if not."""
    config = bench.SERVER_CONFIGS[name]
    port = bench.free_port()
    base = f"http://{bench.HOST}:{port}"
    try:
        launch = bench.LAUNCHERS[config.launcher](config, port, ws)
    except bench.LaunchError as exc:
        raise Unavailable(f"not started: {exc}") from None
    launch.env.update(opts.server_env)
    log_path = ws.root / f"{what}-{name}-run{run}.log"
    print(f"[run {run}] {what} {name}: starting, log {log_path.name}", flush=True)
    with bench.started(launch, log_path) as (proc, sampler):
        ready = bench.wait_until(f"{base}{launch.ready_path}", proc, opts.ready_timeout_s)
        if ready is None:
            raise Unavailable(f"not ready (exit code {proc.poll()}): {bench._tail(log_path, 300)}")
        problem = bench.check_answer(
            base, body_file.read_bytes(), config.headers, expected[config.model], launch.infer_path
        )
        if problem is not None:
            raise Unavailable(problem)
        print(f"[run {run}] {what} {name}: ready in {ready:.1f}s, answer checked", flush=True)
        yield Server(name, config, base, port, launch.infer_path, proc, sampler)


def capacity(run: int, server: Server, warmup_s: int, seconds: int, body_file: Path) -> ServerRow:
    """wrk at 64 connections (warm-up discarded): the row, with 2xx/s as the capacity."""
    url = f"{server.base}{server.infer_path}"
    server.sampler.take()
    result: WrkResult | None = None
    note = "capacity for the open-loop run"
    try:
        result = bench.measure_wrk(
            url, CAPACITY_CONNECTIONS, warmup_s, seconds, server.config.headers, body_file
        )
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        note = f"{note}: {str(exc)[:300]}"
    rss, pss, procs = server.sampler.take()
    row = ServerRow(run, server.name, CAPACITY_CONNECTIONS, result, rss, pss, procs, note)
    print(f"    {row.one_line()}", flush=True)
    return row


def _open_loop_target(server: Server, body_file: Path) -> Target:
    return Target(
        server.port, server.infer_path, body_file.read_bytes(), dict(server.config.headers)
    )


def _pool_note(summary: Summary, alive: bool) -> str:
    notes = []
    if summary.max_busy >= summary.connections:
        notes.append(
            f"all {summary.connections} connections were busy at once: the pool, not only the "
            "server, held requests back (raise --open-connections)"
        )
    if not alive:
        notes.append("the server exited during the run")
    return "; ".join(notes)


def bench_fixed_rate(
    run: int,
    opts: bench.Options,
    ws: bench.Workspace,
    body_file: Path,
    expected: Mapping[str, np.ndarray],
) -> tuple[list[ServerRow], list[FixedRateRow]]:
    """Capacity with wrk, then the open loop at 80% of it for the measured duration."""
    name = opts.fixed_rate_config
    try:
        with serving(run, name, opts, ws, body_file, expected, "fixed-rate") as server:
            cap = capacity(run, server, opts.warmup_s, opts.duration_s, body_file)
            if cap.result is None or cap.result.rps <= 0 or not server.alive():
                return [cap], [FixedRateRow(run, name, 0, FIXED_RATE_FRACTION, None, 0, cap.note)]
            rate = FIXED_RATE_FRACTION * cap.result.rps
            print(f"    open loop at {rate:,.1f} req/s for {opts.duration_s} s", flush=True)
            server.sampler.take()
            raw = run_open_loop(
                _open_loop_target(server, body_file),
                rate,
                opts.duration_s,
                opts.open_connections,
                TIMEOUT_S,
            )
            rss, _, _ = server.sampler.take()
            summary = summarize(raw)
            note = _pool_note(summary, server.alive())
            row = FixedRateRow(run, name, cap.result.rps, FIXED_RATE_FRACTION, summary, rss, note)
            print(f"    {row.one_line()}\n    ({summary.one_line()})", flush=True)
            return [cap], [row]
    except Unavailable as exc:
        print(f"[run {run}] fixed-rate {name}: FAILED: {exc}", flush=True)
        return [], [FixedRateRow(run, name, 0, FIXED_RATE_FRACTION, None, 0, str(exc)[:300])]


def bench_soak(
    run: int,
    opts: bench.Options,
    ws: bench.Workspace,
    body_file: Path,
    expected: Mapping[str, np.ndarray],
) -> tuple[list[ServerRow], list[SoakRow]]:
    """Capacity with wrk (about 10 s), then the open loop at 70% of it for --soak-minutes."""
    name = opts.soak_config
    seconds = opts.soak_minutes * 60

    def failed(note: str, capacity_rps: float = 0) -> SoakRow:
        return SoakRow(run, name, capacity_rps, SOAK_FRACTION, (), None, 0, note)

    try:
        with serving(run, name, opts, ws, body_file, expected, "soak") as server:
            cap = capacity(
                run, server, opts.warmup_s, min(SOAK_CAPACITY_S, opts.duration_s), body_file
            )
            if cap.result is None or cap.result.rps <= 0 or not server.alive():
                return [cap], [failed(cap.note)]
            rate = SOAK_FRACTION * cap.result.rps
            print(f"    soak at {rate:,.1f} req/s for {opts.soak_minutes:g} min", flush=True)
            rss_at: dict[float, int] = {}
            stolen_at: dict[float, float | None] = {}
            cpu = [cpu_times()]

            def tick(t: float) -> None:
                rss_at[t] = server.rss() if server.alive() else 0
                cpu.append(cpu_times())
                stolen_at[t] = stolen_share(cpu[-2], cpu[-1])
                print(f"    soak: {t / 60:.1f} min, RSS {rss_at[t] / 2**20:.0f} MiB", flush=True)

            server.sampler.take()
            raw = run_open_loop(
                _open_loop_target(server, body_file),
                rate,
                seconds,
                opts.open_connections,
                TIMEOUT_S,
                on_tick=tick,
                tick_s=WINDOW_S,
            )
            peak, _, _ = server.sampler.take()
            summary = summarize(raw)
            minutes = tuple(
                SoakMinute(
                    w,
                    rss_at.get(w.end_s, _nearest(rss_at, w.end_s, 0)),
                    stolen_at.get(w.end_s, _nearest(stolen_at, w.end_s, None)),
                )
                for w in windows(raw, WINDOW_S)
            )
            row = SoakRow(
                run,
                name,
                cap.result.rps,
                SOAK_FRACTION,
                minutes,
                summary,
                peak,
                _pool_note(summary, server.alive()),
            )
            for minute in minutes:
                print(f"    minute {' | '.join(minute.cells())}", flush=True)
            print(f"    {row.one_line()}", flush=True)
            return [cap], [row]
    except Unavailable as exc:
        print(f"[run {run}] soak {name}: FAILED: {exc}", flush=True)
        return [], [failed(str(exc)[:300])]


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) clock ticks of the whole machine so far, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (fields[7], sum(fields)) if len(fields) == 8 else None


def stolen_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time the hypervisor took between two cpu_times() readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _nearest(values: Mapping[float, V], t: float, default: V) -> V:
    """The value at the key nearest t (ticks are floats), `default` when none is within 1 s."""
    if not values:
        return default
    key = min(values, key=lambda k: abs(k - t))
    return values[key] if math.isclose(key, t, abs_tol=1.0) else default
