"""A fixed-rate (open-loop) HTTP/1.1 load generator for 127.0.0.1, on asyncio streams.

    taskset -c 1 .venv/bin/python -m tests.load.openloop http://127.0.0.1:8000/infer \\
        --rate 300 --duration 20 --body-file body.json -H "X-API-Key: ..."

Request i is scheduled at t0 + i/R, for i/R < D; it goes out on a free one of N keep-alive
connections (opened before t0; the one freed last, so that a light load keeps to a few warm
connections; one idle for 4 s is reopened first, as uvicorn closes them after 5 s), and its
latency is measured from its *scheduled* time: when the server falls behind and every
connection is busy, the wait counts (no coordinated omission). Each request has a deadline of
its scheduled time plus the timeout; one that misses it is a timeout (its connection is
closed), and one still waiting for a connection at its deadline is not sent. So the run stops
by itself, at most D plus the timeout (plus connecting) after it starts.

Responses are read by their Content-Length (or chunked encoding, or until the server closes);
a connection that the server closed while idle is reopened once for the same request. Only
2xx responses count toward the achieved rate and the latency percentiles; non-2xx responses
are counted by status, socket and protocol errors and timeouts apart. The send lag (from the
scheduled time to the write) shows whether the generator, or the pool, kept up.

`run_open_loop` is the function API (bench.py uses it); `summarize` and `windows` turn its raw
per-request record into the report's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HOST = "127.0.0.1"
clock = time.perf_counter
PENDING = 0  # status of a request with no outcome yet (at the end: a timeout)
TIMEOUT = -1
ERROR = -2  # connect, read or write error, or a malformed response
IDLE_REOPEN_S = 4.0  # uvicorn closes a keep-alive connection idle for 5 s: reopen before that
MAX_HEAD = 64 * 1024
MIN_SLEEP_S = 0.001


class ProtocolError(ValueError):
    """The response is not HTTP/1.x as this reader understands it."""


@dataclass(frozen=True)
class Target:
    """What to send: the same request to 127.0.0.1:port every time."""

    port: int
    path: str = "/infer"
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"
    content_type: str = "application/json"

    @classmethod
    def from_url(
        cls, url: str, body: bytes = b"", headers: Mapping[str, str] | None = None, **kw: str
    ) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname != HOST or parts.port is None:
            raise ValueError(f"traffic only to http://{HOST}:<port>: {url}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.port, path, body, dict(headers or {}), **kw)

    def request_bytes(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines += [f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass
class OpenLoopRun:
    """The raw record of one run: per request i (scheduled at i / rate s), in seconds."""

    rate: float
    duration_s: float
    connections: int
    latency_s: array[float]  # from the scheduled time to the end of the response (nan: none)
    status: array[int]  # HTTP status, or PENDING / TIMEOUT / ERROR
    lag_s: array[float]  # from the scheduled time to the write (nan: never sent)
    wall_s: float = 0.0  # the whole run, connecting included
    cpu_s: float = 0.0  # this process's CPU time meanwhile
    connects: int = 0  # connections opened (the pool's, plus reopenings)
    max_busy: int = 0  # most connections in use at once (== connections: the pool ran out)

    @property
    def scheduled(self) -> int:
        return len(self.status)


# ---------------------------------------------------------------- HTTP/1.1 responses
def parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """(status, Content-Length or None, chunked, keep-alive) of a response head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    keep_alive = parts[0] != b"HTTP/1.0"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            if not value.isdigit():
                raise ProtocolError(f"bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.rsplit(b",", 1)[-1].strip() == b"chunked"
        elif name == b"connection":
            tokens = {t.strip() for t in value.split(b",")}
            keep_alive = (
                b"keep-alive" in tokens if parts[0] == b"HTTP/1.0" else b"close" not in tokens
            )
    return status, length, chunked, keep_alive


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one whole response; (status, whether the connection may be reused)."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        status, length, chunked, keep_alive = parse_head(head)
        if not 100 <= status < 200 or status == 101:
            break
    if status == 101:
        raise ProtocolError("the server switched protocols")
    if chunked:
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise ProtocolError(f"bad chunk size line: {line[:40]!r}") from exc
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        if length:
            await reader.readexactly(length)
    elif status not in (204, 304):
        await reader.read()  # no length: the body ends when the server closes
        keep_alive = False
    return status, keep_alive


# ---------------------------------------------------------------- the generator
class _Conn:
    __slots__ = ("reader", "used_at", "uses", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.uses = 0
        self.used_at = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Slot:
    """One connection of the pool, or none (opened when needed)."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: _Conn | None = None

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _Dispatch:
    """Requests to workers: the most recently idle worker first (LIFO), so that a light load
    keeps to a few warm connections; requests in order (FIFO) when every worker is busy."""

    def __init__(self) -> None:
        self.backlog: deque[int] = deque()
        self.idle: list[asyncio.Future[int]] = []

    def put(self, i: int) -> None:
        while self.idle:
            waiter = self.idle.pop()
            if not waiter.done():  # done: its worker was cancelled
                waiter.set_result(i)
                return
        self.backlog.append(i)

    async def get(self) -> int:
        if self.backlog:
            return self.backlog.popleft()
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.idle.append(waiter)
        return await waiter


class _OpenLoop:
    def __init__(
        self,
        target: Target,
        run: OpenLoopRun,
        timeout_s: float,
        on_tick: Callable[[float], None] | None,
        tick_s: float,
    ) -> None:
        self.target = target
        self.request = target.request_bytes()
        self.run = run
        self.timeout_s = timeout_s
        self.on_tick = on_tick
        self.tick_s = tick_s
        self.queue = _Dispatch()
        self.start = 0.0  # perf_counter of request 0 (uvloop's loop.time() counts whole ms)
        self.busy = 0
        self.attempted = 0  # initial connections tried

    async def connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(HOST, self.target.port, limit=MAX_HEAD)
        self.run.connects += 1
        return _Conn(reader, writer)

    async def exchange(self, slot: _Slot) -> int:
        """Send the request on slot's connection and read the answer; the status.

        A reused connection that the server closed while idle is replaced once.
        """
        for _ in range(2):
            if slot.conn is not None and clock() - slot.conn.used_at > IDLE_REOPEN_S:
                slot.drop()
            if slot.conn is None:
                slot.conn = await self.connect()
            conn = slot.conn
            try:
                conn.writer.write(self.request)
                status, keep_alive = await read_response(conn.reader)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                slot.drop()
                partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                if conn.uses and not partial:
                    continue  # closed by the server while idle: once more on a new one
                raise
            conn.uses += 1
            conn.used_at = clock()
            if not keep_alive:
                slot.drop()
            return status
        raise ConnectionError("the server closed two connections in a row")

    async def worker(self, ready: asyncio.Event) -> None:
        slot = _Slot()
        try:
            slot.conn = await asyncio.wait_for(self.connect(), self.timeout_s)
            slot.conn.used_at = clock()
        except OSError:  # TimeoutError included: tried again per request
            pass
        finally:
            self.attempted += 1
        run, rate = self.run, self.run.rate
        await ready.wait()
        try:
            while True:
                i = await self.queue.get()
                if i < 0:
                    return
                scheduled = self.start + i / rate
                deadline = scheduled + self.timeout_s
                now = clock()
                if now >= deadline:
                    run.status[i] = TIMEOUT  # never got a connection in time: not sent
                    continue
                run.lag_s[i] = now - scheduled
                self.busy += 1
                run.max_busy = max(run.max_busy, self.busy)
                try:
                    async with asyncio.timeout(deadline - now):
                        status = await self.exchange(slot)
                    run.latency_s[i] = clock() - scheduled
                    run.status[i] = status
                except TimeoutError:
                    run.status[i] = TIMEOUT
                    slot.drop()
                except (
                    OSError,
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ValueError,
                ):
                    run.status[i] = ERROR
                    slot.drop()
                finally:
                    self.busy -= 1
        finally:
            slot.drop()

    async def schedule(self) -> None:
        """Queue request i at start + i / rate; on_tick at each tick and at the end."""
        run = self.run
        n, rate = run.scheduled, run.rate
        next_tick = self.tick_s if self.on_tick is not None else math.inf
        i = 0
        while i < n:
            now = clock()
            due = min(n, max(0, math.floor((now - self.start) * rate) + 1))
            while i < due:
                self.queue.put(i)
                i += 1
            next_tick = self._ticks(now, next_tick)
            if i < n:
                # Event-loop timers count whole milliseconds: a shorter sleep would spin.
                await asyncio.sleep(max(MIN_SLEEP_S, self.start + i / rate - clock()))
        while next_tick < run.duration_s - 1e-6:
            await asyncio.sleep(max(0.0, self.start + next_tick - clock()))
            next_tick = self._ticks(clock(), next_tick)
        if self.on_tick is not None:
            await asyncio.sleep(max(0.0, self.start + run.duration_s - clock()))
            self.on_tick(run.duration_s)

    def _ticks(self, now: float, next_tick: float) -> float:
        """Call on_tick for each tick before the end that has come; the next one."""
        while self.on_tick is not None and next_tick < self.run.duration_s - 1e-6:
            if now - self.start < next_tick - 1e-6:
                break
            self.on_tick(next_tick)
            next_tick += self.tick_s
        return next_tick


async def open_loop(
    target: Target,
    rate: float,
    duration_s: float,
    connections: int = 64,
    timeout_s: float = 10.0,
    on_tick: Callable[[float], None] | None = None,
    tick_s: float = 60.0,
) -> OpenLoopRun:
    """Send `rate` requests a second for `duration_s` seconds; the raw record of the run.

    on_tick(t) is called (in the event loop: keep it short) at t = tick_s, 2 * tick_s, ...
    before duration_s, and at duration_s, seconds after the first scheduled request.
    """
    if rate <= 0 or duration_s <= 0 or connections < 1 or timeout_s <= 0:
        raise ValueError("rate, duration, connections and timeout must be positive")
    n = math.ceil(rate * duration_s - 1e-9)
    run = OpenLoopRun(
        rate,
        duration_s,
        connections,
        array("d", [math.nan]) * n,
        array("i", [PENDING]) * n,
        array("d", [math.nan]) * n,
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    gen = _OpenLoop(target, run, timeout_s, on_tick, tick_s)
    ready = asyncio.Event()
    workers = [asyncio.create_task(gen.worker(ready)) for _ in range(connections)]
    try:
        while gen.attempted < connections:
            await asyncio.sleep(0.005)  # the pool connects (bounded by the timeout)
        gen.start = clock() + 0.01
        ready.set()
        await asyncio.sleep(gen.start - clock())
        await gen.schedule()
        for _ in workers:
            gen.queue.put(-1)  # after the backlog: each worker stops when it is done
        await asyncio.wait(workers, timeout=timeout_s + 2.0)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    for i, status in enumerate(run.status):
        if status == PENDING:
            run.status[i] = TIMEOUT
    run.wall_s = time.perf_counter() - wall0
    run.cpu_s = time.process_time() - cpu0
    return run


def run_open_loop(
    target: Target,
    rate: float,
    duration_s: float,
    connections: int = 64,
    timeout_s: float = 10.0,
    on_tick: Callable[[float], None] | None = None,
    tick_s: float = 60.0,
) -> OpenLoopRun:
    """open_loop in a fresh event loop (uvloop when installed); blocks until the run is done."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(
            open_loop(target, rate, duration_s, connections, timeout_s, on_tick, tick_s)
        )


# ---------------------------------------------------------------- statistics (pure)
def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of sorted values; nan when empty."""
    if not ordered:
        return math.nan
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(1, rank)) - 1]


@dataclass(frozen=True)
class Latency:
    """Percentiles of 2xx latencies from the scheduled time, in microseconds."""

    count: int
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        ordered = sorted(seconds)
        us = [percentile(ordered, q) * 1e6 for q in (50, 90, 99, 99.9, 100)]
        return cls(len(ordered), *us)


@dataclass(frozen=True)
class Summary:
    """One run: offered and achieved rate, outcomes, latency percentiles."""

    offered_rps: float
    duration_s: float
    scheduled: int
    ok: int
    non2xx: Mapping[int, int]  # status -> responses
    errors: int  # socket and protocol errors
    timeouts: int  # no response by the deadline (sent or not)
    achieved_rps: float  # 2xx responses completed within the duration, per second
    latency: Latency
    lag_p99_us: float  # scheduled time -> write, 99th percentile
    lag_max_us: float
    connections: int
    max_busy: int
    cpu_s: float
    wall_s: float

    @property
    def failed(self) -> int:
        return self.errors + self.timeouts + sum(self.non2xx.values())

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.scheduled * 1e6 if self.scheduled else math.nan

    def one_line(self) -> str:
        lat = self.latency
        non2xx = ", ".join(f"{k}: {v}" for k, v in sorted(self.non2xx.items())) or "0"
        return (
            f"offered {self.offered_rps:,.0f}/s, achieved {self.achieved_rps:,.0f}/s; "
            f"p50 {lat.p50_us / 1e3:.2f} p90 {lat.p90_us / 1e3:.2f} p99 {lat.p99_us / 1e3:.2f} "
            f"p99.9 {lat.p999_us / 1e3:.2f} max {lat.max_us / 1e3:.2f} ms; 2xx {self.ok}, "
            f"non-2xx {non2xx}, errors {self.errors}, timeouts {self.timeouts}; "
            f"send lag p99 {self.lag_p99_us / 1e3:.2f} ms; connections busy at most "
            f"{self.max_busy}/{self.connections}; generator CPU "
            f"{self.cpu_s / self.wall_s if self.wall_s else math.nan:.0%} of a core"
        )


def _outcomes(run: OpenLoopRun, lo: int, hi: int) -> tuple[list[float], dict[int, int], int, int]:
    """2xx latencies, non-2xx by status, errors and timeouts of requests lo..hi-1."""
    ok: list[float] = []
    non2xx: dict[int, int] = {}
    errors = timeouts = 0
    latency, status = run.latency_s, run.status
    for i in range(lo, hi):
        code = status[i]
        if 200 <= code < 300:
            ok.append(latency[i])
        elif code == ERROR:
            errors += 1
        elif code in (TIMEOUT, PENDING):
            timeouts += 1
        else:
            non2xx[code] = non2xx.get(code, 0) + 1
    return ok, non2xx, errors, timeouts


def completions(run: OpenLoopRun) -> list[float]:
    """When each 2xx response completed, in seconds after the first scheduled time, sorted."""
    rate, latency = run.rate, run.latency_s
    return sorted(i / rate + latency[i] for i, code in enumerate(run.status) if 200 <= code < 300)


def _count_between(ordered: Sequence[float], since: float, until: float) -> int:
    return bisect.bisect_left(ordered, until) - bisect.bisect_left(ordered, since)


def summarize(run: OpenLoopRun) -> Summary:
    ok, non2xx, errors, timeouts = _outcomes(run, 0, run.scheduled)
    lags = sorted(lag for lag in run.lag_s if not math.isnan(lag))
    return Summary(
        offered_rps=run.rate,
        duration_s=run.duration_s,
        scheduled=run.scheduled,
        ok=len(ok),
        non2xx=non2xx,
        errors=errors,
        timeouts=timeouts,
        achieved_rps=_count_between(completions(run), 0.0, run.duration_s) / run.duration_s,
        latency=Latency.of(ok),
        lag_p99_us=percentile(lags, 99) * 1e6,
        lag_max_us=percentile(lags, 100) * 1e6,
        connections=run.connections,
        max_busy=run.max_busy,
        cpu_s=run.cpu_s,
        wall_s=run.wall_s,
    )


@dataclass(frozen=True)
class Window:
    """One window of a run: the requests scheduled in [start_s, end_s)."""

    index: int  # 1-based
    start_s: float
    end_s: float
    scheduled: int
    ok: int
    non2xx: int
    errors: int  # socket and protocol errors plus timeouts
    achieved_rps: float  # 2xx responses completed in the window, per second
    p50_us: float
    p99_us: float


def windows(run: OpenLoopRun, window_s: float) -> list[Window]:
    """The run cut into windows of window_s seconds (the last one may be shorter)."""
    out = []
    done = completions(run)
    count = math.ceil(run.duration_s / window_s - 1e-9)
    for k in range(count):
        start, end = k * window_s, min(run.duration_s, (k + 1) * window_s)
        lo = min(run.scheduled, math.ceil(start * run.rate - 1e-9))
        hi = min(run.scheduled, math.ceil(end * run.rate - 1e-9))
        ok, non2xx, errors, timeouts = _outcomes(run, lo, hi)
        ordered = sorted(ok)
        out.append(
            Window(
                index=k + 1,
                start_s=start,
                end_s=end,
                scheduled=hi - lo,
                ok=len(ok),
                non2xx=sum(non2xx.values()),
                errors=errors + timeouts,
                achieved_rps=_count_between(done, start, end) / (end - start),
                p50_us=percentile(ordered, 50) * 1e6,
                p99_us=percentile(ordered, 99) * 1e6,
            )
        )
    return out


# ---------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load.openloop", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("url", help=f"http://{HOST}:PORT/path")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--connections", type=int, default=64, help="at most (64)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds (10)")
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body-file", type=argparse.FileType("rb"), default=None)
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    body = args.body_file.read() if args.body_file else b""
    headers = dict(
        (name.strip(), value.strip()) for name, _, value in (h.partition(":") for h in args.header)
    )
    try:
        target = Target.from_url(args.url, body, headers, method=args.method.upper())
    except ValueError as exc:
        parser.error(str(exc))
    summary = summarize(
        run_open_loop(target, args.rate, args.duration, args.connections, args.timeout)
    )
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(summary)))
    else:
        print(summary.one_line())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
