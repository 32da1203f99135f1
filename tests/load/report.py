"""Parsing wrk's output and rendering the benchmark's Markdown report (no I/O, no torch)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tests.load.openloop import Summary, Window

MARKER = "FRAMEWORM_BENCH"
_PAIR = re.compile(r"(\w+)=(-?\d+(?:\.\d+)?)")
_FIELDS = (
    "requests",
    "duration_us",
    "mean_us",
    "max_us",
    "p50_us",
    "p90_us",
    "p95_us",
    "p99_us",
    "connect",
    "read",
    "write",
    "timeout",
    "non2xx",
)
MIB = 1024 * 1024


@dataclass(frozen=True)
class WrkResult:
    """What wrk_post.lua's done() printed; latencies in microseconds."""

    requests: int
    duration_us: int
    mean_us: float
    max_us: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    connect: int
    read: int
    write: int
    timeout: int
    non2xx: int

    @property
    def ok(self) -> int:
        """Responses below 400 (wrk counts status >= 400 as errors; /infer has no 3xx), in
        time: wrk counts one slower than its timeout as a request, and leaves its latency out
        of the percentiles."""
        return max(0, self.requests - self.non2xx - self.timeout)

    @property
    def rps(self) -> float:
        return self.ok / (self.duration_us / 1e6) if self.duration_us > 0 else 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout


def parse_wrk_output(text: str) -> WrkResult:
    """The last FRAMEWORM_BENCH line of wrk's stdout; ValueError when there is none."""
    lines = [line for line in text.splitlines() if line.startswith(MARKER + " ")]
    if not lines:
        raise ValueError(f"no {MARKER} line in wrk's output: {text[-300:]!r}")
    values = dict(_PAIR.findall(lines[-1]))
    missing = [name for name in _FIELDS if name not in values]
    if missing:
        raise ValueError(f"wrk's summary lacks {', '.join(missing)}: {lines[-1]!r}")
    ints = {"requests", "duration_us", "connect", "read", "write", "timeout", "non2xx"}
    return WrkResult(
        **{
            name: (int(float(values[name])) if name in ints else float(values[name]))
            for name in _FIELDS
        }  # type: ignore[arg-type]
    )


def _mib(value: int) -> str:
    return f"{value / MIB:.0f}" if value else "—"


def _memory(rss: int, pss: int, procs: int) -> str:
    if procs > 1 and pss:
        return f"{_mib(rss)} (PSS {_mib(pss)}, {procs} procs)"
    return _mib(rss)


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


@dataclass(frozen=True)
class ServerRow:
    run: int
    config: str
    connections: int
    result: WrkResult | None
    peak_rss: int
    peak_pss: int
    procs: int
    note: str = ""
    # Frameworm only: CPU ms a request of the event loop (main thread) and of the other threads
    # (the forward pass, log and span export) over the measured run.
    cpu_ms: tuple[float, float] | None = None

    def cells(self) -> list[str]:
        memory = _memory(self.peak_rss, self.peak_pss, self.procs)
        note = self.note if len(self.note) <= 160 else self.note[:157] + "..."
        if self.result is None:
            return [self.config, str(self.connections), "—", "—", "—", "—", "—", memory, note]
        r = self.result
        # Answers past wrk's timeout are in no percentile: those shown are lower bounds.
        bound = ">= " if r.timeout else ""
        return [
            self.config,
            str(self.connections),
            f"{r.rps:,.0f}",
            bound + _ms(r.p50_us),
            bound + _ms(r.p95_us),
            bound + _ms(r.p99_us),
            f"{r.socket_errors} / {r.non2xx}",
            memory,
            note,
        ]

    def one_line(self) -> str:
        c = self.cells()
        cpu = ""
        if self.cpu_ms is not None:
            cpu = f", CPU ms/request: loop {self.cpu_ms[0]:.3f}, other {self.cpu_ms[1]:.3f}"
        return (
            f"{c[0]} c={c[1]}: {c[2]} req/s, p50 {c[3]} p95 {c[4]} p99 {c[5]} ms, "
            f"errors/non-2xx {c[6]}, peak RSS {c[7]} MiB{cpu} {c[8]}"
        ).rstrip()

    def cpu_cells(self) -> list[str]:
        loop, other = self.cpu_ms or (0.0, 0.0)
        return [
            self.config,
            str(self.connections),
            f"{loop:.3f}",
            f"{other:.3f}",
            f"{loop + other:.3f}",
        ]


ALONE_BASELINE = "eager float32"  # the model as registered
# How the server runs a convolutional model on the CPU (FRAMEWORM_CPU_CHANNELS_LAST).
CHANNELS_LAST = "channels_last float32"
# The one-connection check compares with the fastest of these: the model as registered, and as
# the server runs it, so a faster layout in the server cannot flatter the comparison.
SINGLE_SAMPLE_VARIANTS = (ALONE_BASELINE, CHANNELS_LAST)


@dataclass(frozen=True)
class AloneRow:
    run: int
    model: str
    batch: int
    calls: int
    samples_per_s: float
    median_call_ms: float
    per_sample_ms: float
    variant: str = ALONE_BASELINE

    def cells(self) -> list[str]:
        return [
            self.model,
            self.variant,
            str(self.batch),
            f"{self.samples_per_s:,.0f}",
            f"{self.per_sample_ms:.3f}",
            f"{self.median_call_ms:.3f}",
            str(self.calls),
        ]

    def one_line(self) -> str:
        c = self.cells()
        return (
            f"{c[0]} {c[1]} batch {c[2]}: {c[3]} samples/s, {c[4]} ms/sample "
            f"(median call {c[5]} ms)"
        )


@dataclass(frozen=True)
class ColdRow:
    run: int
    attempt: int
    listening_s: float | None
    ready_s: float | None
    peak_rss: int
    peak_pss: int
    procs: int
    note: str = ""

    def cells(self) -> list[str]:
        def sec(value: float | None) -> str:
            return "—" if value is None else f"{value:.2f}"

        memory = _memory(self.peak_rss, self.peak_pss, self.procs)
        return [str(self.attempt), sec(self.listening_s), sec(self.ready_s), memory, self.note]

    def one_line(self) -> str:
        c = self.cells()
        return f"cold start {c[0]}: listening {c[1]} s, ready {c[2]} s, peak RSS {c[3]} MiB {c[4]}"


def _ms_or_dash(us: float) -> str:
    return "—" if math.isnan(us) else _ms(us)


def _statuses(counts: Mapping[int, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "0"


@dataclass(frozen=True)
class FixedRateRow:
    """An open-loop run at a fraction of the capacity wrk measured (64 connections)."""

    run: int
    config: str
    capacity_rps: float  # 2xx/s, wrk at 64 connections; 0: not measured
    fraction: float
    summary: Summary | None
    peak_rss: int
    note: str = ""

    def cells(self) -> list[str]:
        capacity = f"{self.capacity_rps:,.0f}" if self.capacity_rps else "—"
        s = self.summary
        if s is None:
            return [self.config, capacity, *["—"] * 10, _mib(self.peak_rss), self.note]
        lat = s.latency
        return [
            self.config,
            capacity,
            f"{s.offered_rps:,.0f} ({self.fraction:.0%})",
            f"{s.achieved_rps:,.0f}",
            _ms_or_dash(lat.p50_us),
            _ms_or_dash(lat.p90_us),
            _ms_or_dash(lat.p99_us),
            _ms_or_dash(lat.p999_us),
            _ms_or_dash(lat.max_us),
            _statuses(s.non2xx),
            f"{s.errors} / {s.timeouts}",
            f"{_ms_or_dash(s.lag_p99_us)} ({s.max_busy}/{s.connections})",
            _mib(self.peak_rss),
            self.note,
        ]

    def one_line(self) -> str:
        c = self.cells()
        return (
            f"{c[0]} fixed rate {c[2]} of {c[1]} req/s: achieved {c[3]}/s, p50 {c[4]} p90 {c[5]} "
            f"p99 {c[6]} p99.9 {c[7]} max {c[8]} ms, non-2xx {c[9]}, errors/timeouts {c[10]}, "
            f"send lag p99 {c[11]}, peak RSS {c[12]} MiB {c[13]}"
        ).rstrip()


# The soak's verdict (issue: "no error, RSS growth < 5% after warm-up, p99 steady").
RSS_GROWTH_LIMIT = 0.05  # end of the last minute vs end of minute 1
P99_SPREAD = 2.0  # steady: every minute's p99 within 2x of the median minute's, either way


@dataclass(frozen=True)
class SoakMinute:
    window: Window
    rss: int  # the server's process tree at the end of the window (0: unreadable)
    # Share of the machine's CPU time its hypervisor took in the window (/proc/stat "steal"):
    # when it is high, the server was not running, whatever it was doing. None: unknown.
    stolen: float | None = None

    def cells(self) -> list[str]:
        w = self.window
        return [
            str(w.index),
            f"{w.achieved_rps:,.1f}",
            _ms_or_dash(w.p50_us),
            _ms_or_dash(w.p99_us),
            str(w.ok),
            str(w.non2xx),
            str(w.errors),
            _mib(self.rss),
            "-" if self.stolen is None else f"{self.stolen:.1%}",
        ]


@dataclass(frozen=True)
class SoakVerdict:
    failed: int  # non-2xx, errors and timeouts over the whole soak
    rss_growth: float | None  # None: fewer than two minutes, or RSS unreadable
    median_p99_us: float
    unsteady: tuple[int, ...]  # minutes whose p99 is outside the band
    minutes: int

    @property
    def p99_steady(self) -> bool | None:
        return None if self.minutes < 2 else not self.unsteady

    @property
    def rss_ok(self) -> bool | None:
        return None if self.rss_growth is None else self.rss_growth < RSS_GROWTH_LIMIT

    @property
    def holds(self) -> bool | None:
        """True: all three hold; False: one does not; None: none fails but one is not shown."""
        parts = (self.failed == 0, self.rss_ok, self.p99_steady)
        if False in parts:
            return False
        return None if None in parts else True

    def lines(self) -> list[str]:
        def word(ok: bool | None) -> str:
            return {True: "holds", False: "does NOT hold", None: "not shown"}[ok]

        growth = (
            "needs two minutes or more"
            if self.rss_growth is None
            else f"{self.rss_growth:+.1%} from the end of minute 1 to the end"
        )
        band = (
            f"median minute's p99 {_ms_or_dash(self.median_p99_us)} ms, band "
            f"{_ms_or_dash(self.median_p99_us / P99_SPREAD)} to "
            f"{_ms_or_dash(self.median_p99_us * P99_SPREAD)} ms"
        )
        outside = ", ".join(str(m) for m in self.unsteady) or "none"
        verdict = {True: "**holds**", False: "**does NOT hold**", None: "**not shown**"}
        return [
            f"- no error (non-2xx, socket errors, timeouts): {self.failed} "
            f"({word(self.failed == 0)})",
            f"- RSS growth after warm-up < {RSS_GROWTH_LIMIT:.0%}: {growth} ({word(self.rss_ok)})",
            f"- p99 steady (every minute's p99 within {P99_SPREAD:g}x of the median minute's, "
            f"either way): {band}; minutes outside: {outside} ({word(self.p99_steady)})",
            f"- verdict: {verdict[self.holds]}",
        ]


def soak_verdict(minutes: Sequence[SoakMinute], failed: int) -> SoakVerdict:
    """The soak's three claims over its per-minute windows (see SoakVerdict)."""
    p99s = [m.window.p99_us for m in minutes]
    known = [p for p in p99s if not math.isnan(p)]
    median = statistics.median(known) if known else math.nan
    unsteady = tuple(
        m.window.index
        for m in minutes
        if math.isnan(m.window.p99_us)
        or not median / P99_SPREAD <= m.window.p99_us <= median * P99_SPREAD
    )
    first, last = (minutes[0].rss, minutes[-1].rss) if minutes else (0, 0)
    growth = (last - first) / first if len(minutes) >= 2 and first and last else None
    return SoakVerdict(failed, growth, median, unsteady, len(minutes))


@dataclass(frozen=True)
class SoakRow:
    """One soak: open loop at a fraction of capacity for minutes, windows of one minute."""

    run: int
    config: str
    capacity_rps: float
    fraction: float
    minutes: tuple[SoakMinute, ...]
    summary: Summary | None
    peak_rss: int
    note: str = ""

    def verdict(self) -> SoakVerdict:
        failed = self.summary.failed if self.summary is not None else 1
        return soak_verdict(self.minutes, failed)

    def render(self) -> list[str]:
        head = f"### Soak: `{self.config}` at {self.fraction:.0%} of capacity"
        out = [head, ""]
        if self.summary is None:
            return [*out, f"Not measured: {self.note or 'no capacity'}"]
        s = self.summary
        out.append(
            f"Capacity (wrk, 64 connections): {self.capacity_rps:,.0f} req/s; offered "
            f"{s.offered_rps:,.1f} req/s for {s.duration_s / 60:g} min over at most "
            f"{s.connections} connections; overall {s.one_line()}; peak RSS "
            f"{_mib(self.peak_rss)} MiB. {self.note}".rstrip()
        )
        out += ["", table(SOAK_HEADER, [m.cells() for m in self.minutes]), ""]
        return out + self.verdict().lines()

    def one_line(self) -> str:
        v = self.verdict()
        verdict = {True: "holds", False: "does NOT hold", None: "not shown"}[v.holds]
        return f"soak {self.config}: {len(self.minutes)} windows, verdict {verdict}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


SERVER_HEADER = (
    "configuration",
    "conns",
    "req/s (2xx)",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "errors / non-2xx",
    "peak RSS MiB",
    "note",
)
ALONE_HEADER = ("model", "variant", "batch", "samples/s", "ms/sample", "median call ms", "calls")
CPU_HEADER = ("configuration", "conns", "event loop", "other threads", "total")
CPU_NOTE = (
    "CPU time of the server's threads over the measured run, per request (wrk's count), in ms: "
    "the event loop is the main thread; the other threads are the forward pass and the log and "
    "span exporters. On one core, throughput is about 1 / total."
)
COLD_HEADER = ("attempt", "listening s", "/readyz 200 s", "peak RSS MiB", "note")
FIXED_HEADER = (
    "configuration",
    "capacity req/s",
    "offered req/s",
    "achieved req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "non-2xx",
    "errors / timeouts",
    "send lag p99 ms (conns busy)",
    "peak RSS MiB",
    "note",
)
OPEN_LOOP_NOTE = (
    "Request i is sent at t0 + i/rate over a pool of keep-alive connections "
    "(tests/load/openloop.py); latency runs from that scheduled time, so waiting for a free "
    "connection counts. Percentiles are of 2xx responses (nearest rank); achieved = 2xx "
    "completed within the duration, per second; send lag = scheduled time to the write "
    "(generator or pool falling behind), with the most connections busy at once."
)
SOAK_HEADER = (
    "minute",
    "achieved req/s",
    "p50 ms",
    "p99 ms",
    "2xx",
    "non-2xx",
    "errors + timeouts",
    "RSS MiB at end",
    "CPU stolen by the hypervisor",
)


def checks(server_rows: Sequence[ServerRow], alone_rows: Sequence[AloneRow], run: int) -> list[str]:
    """The issue's claims, evaluated on one run (ratios within the run only)."""
    lines = []
    rows = [r for r in server_rows if r.run == run and r.result is not None]
    by = {(r.config, r.connections): r.result for r in rows if r.result is not None}
    top = max((r.connections for r in rows), default=0)
    batching, nobatch = by.get(("cnn-batching", top)), by.get(("cnn-nobatch", top))
    if batching and nobatch and nobatch.rps > 0 and batching.rps > 0:
        ratio = batching.rps / nobatch.rps
        verdict = "holds" if ratio >= 2 else "does NOT hold"
        lines.append(
            f"- CNN batching vs max_batch_size=1 at {top} connections: {batching.rps:,.0f} / "
            f"{nobatch.rps:,.0f} req/s = **{ratio:.2f}x** (target >= 2x: {verdict})"
        )
    alone: dict[tuple[str, int], float] = {}
    for a in alone_rows:
        if a.run == run and a.batch == 1 and a.variant in SINGLE_SAMPLE_VARIANTS:
            key = (a.model, a.batch)
            alone[key] = min(alone.get(key, a.per_sample_ms), a.per_sample_ms)
    for r in rows:
        if r.connections != 1 or r.result is None or r.result.ok == 0 or "-cache-" in r.config:
            continue  # a cached answer runs no model: not a comparison with it
        model = r.config.split("-", 1)[0]
        if model.startswith("plain"):
            model = r.config.rsplit("-", 1)[-1]
        single = alone.get((model, 1))
        if single is None:
            continue
        gap = r.result.p50_us / 1000 - single
        verdict = "holds" if gap <= 0.5 else "does NOT hold"
        lines.append(
            f"- {r.config} at 1 connection: p50 {r.result.p50_us / 1000:.2f} ms vs the model "
            f"alone {single:.2f} ms/sample: **{gap:+.2f} ms** (target <= +0.5 ms: {verdict})"
        )
    return lines + overhead_checks(rows) + cache_checks(rows)


# (baseline, with the layers, budget): the hardening and telemetry budgets of the issues.
OVERHEAD_BUDGETS = (
    ("cnn-batching", "cnn-everything-on", 0.10),
    ("mlp-batching", "mlp-everything-on", 0.10),
    ("cnn-batching", "cnn-metrics", 0.05),
    ("cnn-metrics", "cnn-metrics-tracing", 0.10),
)


def overhead_checks(rows: Sequence[ServerRow]) -> list[str]:
    """What each layer set costs against its baseline: mean req/s of every row of each.

    Name the two configurations several times in alternation (`--configs a,b,a,b,...`) and the
    means compare neighbours measured under the same conditions, which is what makes a 5 or 10%
    budget measurable on a machine whose runs differ by more than that.
    """
    rates: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r.result is not None and r.result.rps > 0:
            rates.setdefault((r.config, r.connections), []).append(r.result.rps)
    lines = []
    for base, layered, budget in OVERHEAD_BUDGETS:
        for (config, connections), with_layers in sorted(rates.items()):
            without = rates.get((base, connections))
            if config != layered or without is None:
                continue
            change = statistics.fmean(with_layers) / statistics.fmean(without) - 1
            verdict = "holds" if change >= -budget else "does NOT hold"
            lines.append(
                f"- {layered} vs {base} at {connections} connections, mean of "
                f"{len(with_layers)} / {len(without)} rows: **{change:+.1%}** "
                f"(budget -{budget:.0%}: {verdict})"
            )
    return lines


CACHE_MODELS = ("cnn", "mlp")


def cache_checks(rows: Sequence[ServerRow]) -> list[str]:
    """Result cache on vs off on the repeated-input workload, at each connection count."""
    by = {(r.config, r.connections): r.result for r in rows if r.result is not None}
    lines = []
    for model in CACHE_MODELS:
        for (config, connections), on in sorted(by.items()):
            off = by.get((f"{model}-cache-off", connections))
            if config != f"{model}-cache-on" or off is None or off.rps <= 0:
                continue
            conns = f"{connections} connection{'s' if connections != 1 else ''}"
            lines.append(
                f"- {model.upper()} result cache on vs off, repeated inputs, {conns}: "
                f"{on.rps:,.0f} / {off.rps:,.0f} req/s = **{on.rps / off.rps:.2f}x**, "
                f"p99 {_ms(on.p99_us)} vs {_ms(off.p99_us)} ms"
            )
    return lines


def render_report(
    meta: Mapping[str, str],
    server_rows: Sequence[ServerRow],
    alone_rows: Sequence[AloneRow],
    cold_rows: Sequence[ColdRow],
    configs: Mapping[str, str],
    fixed_rows: Sequence[FixedRateRow] = (),
    soak_rows: Sequence[SoakRow] = (),
) -> str:
    runs = sorted(
        {r.run for r in server_rows}
        | {r.run for r in alone_rows}
        | {r.run for r in cold_rows}
        | {r.run for r in fixed_rows}
        | {r.run for r in soak_rows}
    )
    out = ["# Frameworm benchmark", ""]
    out += [f"- {key}: {value}" for key, value in meta.items()]
    if configs:
        out.append("- configurations: " + "; ".join(f"`{k}` {v}" for k, v in configs.items()))
    out.append(
        "- req/s counts responses below 400 within wrk's timeout only; errors = socket errors "
        "(connect, read, write, timeout), non-2xx = responses >= 400; answers past the timeout "
        "are in no percentile, which then read `>=`. Compare configurations within one run, as "
        "ratios."
    )
    for run in runs:
        out += ["", f"## Run {run}"]
        srows = [r.cells() for r in server_rows if r.run == run]
        if srows:
            out += ["", "### Servers under load", "", table(SERVER_HEADER, srows)]
        cpu_rows = [r.cpu_cells() for r in server_rows if r.run == run and r.cpu_ms is not None]
        if cpu_rows:
            out += ["", "### Server CPU per request", "", CPU_NOTE, "", table(CPU_HEADER, cpu_rows)]
        arows = [r.cells() for r in alone_rows if r.run == run]
        if arows:
            out += ["", "### Model alone (in-process, one torch thread, no server)", ""]
            out.append(table(ALONE_HEADER, arows))
        crows = [r.cells() for r in cold_rows if r.run == run]
        if crows:
            out += ["", "### Cold start (`frameworm serve`, demo cnn-digits, seeded registry)", ""]
            out.append(table(COLD_HEADER, crows))
        frows = [r.cells() for r in fixed_rows if r.run == run]
        if frows:
            out += ["", "### Fixed rate (open loop)", "", OPEN_LOOP_NOTE, ""]
            out.append(table(FIXED_HEADER, frows))
        for soak in (r for r in soak_rows if r.run == run):
            out += ["", *soak.render()]
        found = checks(server_rows, alone_rows, run)
        if found:
            out += ["", "### Checks", "", *found]
    return "\n".join(out) + "\n"
