"""Parsing wrk's output and rendering the benchmark's Markdown report (no I/O, no torch)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
        """Responses below 400 (wrk counts status >= 400 as errors; /infer has no 3xx)."""
        return self.requests - self.non2xx

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

    def cells(self) -> list[str]:
        memory = _memory(self.peak_rss, self.peak_pss, self.procs)
        note = self.note if len(self.note) <= 160 else self.note[:157] + "..."
        if self.result is None:
            return [self.config, str(self.connections), "—", "—", "—", "—", "—", memory, note]
        r = self.result
        return [
            self.config,
            str(self.connections),
            f"{r.rps:,.0f}",
            _ms(r.p50_us),
            _ms(r.p95_us),
            _ms(r.p99_us),
            f"{r.socket_errors} / {r.non2xx}",
            memory,
            note,
        ]

    def one_line(self) -> str:
        c = self.cells()
        return (
            f"{c[0]} c={c[1]}: {c[2]} req/s, p50 {c[3]} p95 {c[4]} p99 {c[5]} ms, "
            f"errors/non-2xx {c[6]}, peak RSS {c[7]} MiB {c[8]}"
        ).rstrip()


@dataclass(frozen=True)
class AloneRow:
    run: int
    model: str
    batch: int
    calls: int
    samples_per_s: float
    median_call_ms: float
    per_sample_ms: float

    def cells(self) -> list[str]:
        return [
            self.model,
            str(self.batch),
            f"{self.samples_per_s:,.0f}",
            f"{self.per_sample_ms:.3f}",
            f"{self.median_call_ms:.3f}",
            str(self.calls),
        ]

    def one_line(self) -> str:
        c = self.cells()
        return f"{c[0]} batch {c[1]}: {c[2]} samples/s, {c[3]} ms/sample (median call {c[4]} ms)"


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
ALONE_HEADER = ("model", "batch", "samples/s", "ms/sample", "median call ms", "calls")
COLD_HEADER = ("attempt", "listening s", "/readyz 200 s", "peak RSS MiB", "note")


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
    alone = {
        (a.model, a.batch): a.per_sample_ms for a in alone_rows if a.run == run and a.batch == 1
    }
    for r in rows:
        if r.connections != 1 or r.result is None or r.result.ok == 0:
            continue
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
    return lines


def render_report(
    meta: Mapping[str, str],
    server_rows: Sequence[ServerRow],
    alone_rows: Sequence[AloneRow],
    cold_rows: Sequence[ColdRow],
    configs: Mapping[str, str],
) -> str:
    runs = sorted(
        {r.run for r in server_rows} | {r.run for r in alone_rows} | {r.run for r in cold_rows}
    )
    out = ["# Frameworm benchmark", ""]
    out += [f"- {key}: {value}" for key, value in meta.items()]
    if configs:
        out.append("- configurations: " + "; ".join(f"`{k}` {v}" for k, v in configs.items()))
    out.append(
        "- req/s counts responses below 400 only; errors = socket errors (connect, read, write, "
        "timeout), non-2xx = responses >= 400. Compare configurations within one run, as ratios."
    )
    for run in runs:
        out += ["", f"## Run {run}"]
        srows = [r.cells() for r in server_rows if r.run == run]
        if srows:
            out += ["", "### Servers under load", "", table(SERVER_HEADER, srows)]
        arows = [r.cells() for r in alone_rows if r.run == run]
        if arows:
            out += ["", "### Model alone (one thread, in-process, no server)", ""]
            out.append(table(ALONE_HEADER, arows))
        crows = [r.cells() for r in cold_rows if r.run == run]
        if crows:
            out += ["", "### Cold start (`frameworm serve`, demo cnn-digits, seeded registry)", ""]
            out.append(table(COLD_HEADER, crows))
        found = checks(server_rows, alone_rows, run)
        if found:
            out += ["", "### Checks", "", *found]
    return "\n".join(out) + "\n"
