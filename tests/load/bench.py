"""The Frameworm benchmark: the method of shared/BENCHMARK.md, as one script.

    .venv/bin/python -m tests.load.bench                       # the full sweep, twice
    .venv/bin/python -m tests.load.bench --quick --configs cnn-batching,cnn-nobatch
    .venv/bin/python -m tests.load.bench --list                # the configurations

Each server under test runs pinned to core 0 with torch on one thread; wrk runs pinned to core 1
with one thread and `wrk_post.lua`, a warm-up run (discarded) then the measured run, at each
connection count. Before any load, each server's first answer is checked against the model run
in this process. The server's process tree is sampled every 100 ms for peak RSS (and PSS when it
has several processes). The whole sweep runs `--runs` times; every run is printed and the
Markdown report is written to `--out`. Traffic goes only to 127.0.0.1; every subprocess is
bounded in time; servers are stopped by pid (SIGTERM, then SIGKILL). Nothing is installed.

Adding a configuration is one entry in SERVER_CONFIGS (env overrides + headers); adding a peer
server is one entry in LAUNCHERS plus its configurations.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tests.load.report import (
    AloneRow,
    ColdRow,
    ServerRow,
    WrkResult,
    parse_wrk_output,
    render_report,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv this script runs from
LUA_SCRIPT = Path(__file__).with_name("wrk_post.lua")
SERVER_CORE = 0
LOAD_CORE = 1
HOST = "127.0.0.1"
ATOL = RTOL = 1e-4

# Torch on one intra-op and one inter-op thread, whatever the server does itself.
ONE_THREAD = {
    "FRAMEWORM_TORCH_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
# Every Frameworm server under test: local only, no demo seeding, no drain delay on stop,
# no result cache.
FRAMEWORM_BASE = {
    "FRAMEWORM_HOST": HOST,
    "FRAMEWORM_SEED_DEMO": "false",
    "FRAMEWORM_DRAIN_DELAY_S": "0",
    "FRAMEWORM_SHUTDOWN_TIMEOUT_S": "5",
    "FRAMEWORM_ENV": "development",
    # wrk repeats one body: a result cache would measure its hits, not the model.
    "FRAMEWORM_RESULT_CACHE": "off",
}
# "Layers off": no API keys, no rate limit, no metrics, no tracing, no per-request info logging.
LAYERS_OFF = {
    "FRAMEWORM_AUTH_ENABLED": "false",
    "FRAMEWORM_RATE_LIMIT_ENABLED": "false",
    "FRAMEWORM_METRICS_ENABLED": "false",
    "FRAMEWORM_LOG_LEVEL": "warning",
}
# "Everything on": an API key on every request, a rate limit that is checked but does not bind,
# request validation, metrics, JSON access logs at info, tracing at the default ratio (0.01)
# exported over OTLP/HTTP to a sink in this process.
BENCH_KEY = "fw-benchmark-bootstrap-key-0123456789abcdef"
OTLP_SINK = "sink"  # replaced by the sink's URL when the server is launched
EVERYTHING_ON = {
    "FRAMEWORM_AUTH_ENABLED": "true",
    "FRAMEWORM_BOOTSTRAP_API_KEY": BENCH_KEY,
    "FRAMEWORM_API_KEY_PEPPER": "benchmark-pepper-0123456789abcdef0123456789",
    "FRAMEWORM_RATE_LIMIT_ENABLED": "true",
    # Checked on every request but never binding; a one-second window keeps the moving
    # window's per-key event list as short as a real limit would.
    "FRAMEWORM_RATE_LIMIT": "1000000/second",
    "FRAMEWORM_METRICS_ENABLED": "true",
    "FRAMEWORM_LOG_LEVEL": "info",
    "FRAMEWORM_LOG_FORMAT": "json",
    "FRAMEWORM_OTLP_ENDPOINT": OTLP_SINK,
    "FRAMEWORM_OTLP_PROTOCOL": "http",
}
BATCH_32 = {"FRAMEWORM_MAX_BATCH_SIZE": "32", "FRAMEWORM_MAX_BATCH_DELAY_MS": "5"}
NO_BATCH = {"FRAMEWORM_MAX_BATCH_SIZE": "1"}


@dataclass(frozen=True)
class ServerConfig:
    """One server configuration: which launcher, which benchmark model, env and headers."""

    model: str  # "mlp" | "cnn" (tests/load/models.py)
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. {"X-API-Key": "..."}
    launcher: str = "frameworm"  # a key of LAUNCHERS
    description: str = ""


# name -> configuration: everything on vs layers off (the hardening overhead), batching vs
# none, and the peers.
SERVER_CONFIGS: dict[str, ServerConfig] = {
    "cnn-everything-on": ServerConfig(
        "cnn",
        {**EVERYTHING_ON, **BATCH_32},
        headers={"X-API-Key": BENCH_KEY},
        description="batch 32 / 5 ms, all hardening and telemetry on",
    ),
    "mlp-everything-on": ServerConfig(
        "mlp",
        {**EVERYTHING_ON, **BATCH_32},
        headers={"X-API-Key": BENCH_KEY},
        description="batch 32 / 5 ms, all hardening and telemetry on",
    ),
    "cnn-batching": ServerConfig("cnn", {**LAYERS_OFF, **BATCH_32}, description="batch 32 / 5 ms"),
    # Issue 5's budgets: metrics on (<= 5% below layers off), then tracing too (<= 10% more).
    "cnn-metrics": ServerConfig(
        "cnn",
        {**LAYERS_OFF, **BATCH_32, "FRAMEWORM_METRICS_ENABLED": "true"},
        description="layers off but metrics on",
    ),
    "cnn-metrics-tracing": ServerConfig(
        "cnn",
        {
            **LAYERS_OFF,
            **BATCH_32,
            "FRAMEWORM_METRICS_ENABLED": "true",
            "FRAMEWORM_OTLP_ENDPOINT": OTLP_SINK,
            "FRAMEWORM_OTLP_PROTOCOL": "http",
        },
        description="layers off but metrics and tracing (ratio 0.01) on",
    ),
    "cnn-nobatch": ServerConfig("cnn", {**LAYERS_OFF, **NO_BATCH}, description="max batch 1"),
    "mlp-batching": ServerConfig("mlp", {**LAYERS_OFF, **BATCH_32}, description="batch 32 / 5 ms"),
    "mlp-nobatch": ServerConfig("mlp", {**LAYERS_OFF, **NO_BATCH}, description="max batch 1"),
    # Peers (BENCHMARK.md's reference rows). LitServe and TorchServe come later, each in its
    # own venv: a launcher that starts it from there, plus one entry per model here.
    "plain-fastapi-cnn": ServerConfig(
        "cnn", launcher="plain-fastapi", description="async def, model per request"
    ),
    "plain-fastapi-mlp": ServerConfig(
        "mlp", launcher="plain-fastapi", description="async def, model per request"
    ),
}
MEASUREMENTS = ("model-alone", "cold-start")  # not servers under load
DEFAULT_CONFIGS = ("cnn-batching", "cnn-nobatch", "mlp-batching", "model-alone", "cold-start")


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


@dataclass(frozen=True)
class Workspace:
    root: Path
    registry: Path  # the two benchmark models
    demo_registry: Path  # the demo models, for cold start


def _frameworm(config: ServerConfig, port: int, ws: Workspace) -> Launch:
    from tests.load.models import BENCH_MODELS

    env = {
        **FRAMEWORM_BASE,
        "FRAMEWORM_REGISTRY": str(ws.registry),
        "FRAMEWORM_MODEL": BENCH_MODELS[config.model].name,
        "FRAMEWORM_PORT": str(port),
        "FRAMEWORM_API_KEYS_FILE": str(ws.root / "api-keys.json"),
        **config.env,
    }
    if env.get("FRAMEWORM_OTLP_ENDPOINT") == OTLP_SINK:
        env["FRAMEWORM_OTLP_ENDPOINT"] = otlp_sink_url()
    # cwd: a directory without a .env file, so only these settings apply.
    return Launch([str(BIN / "frameworm"), "serve"], env, ws.root)


def _plain_fastapi(config: ServerConfig, port: int, ws: Workspace) -> Launch:
    from tests.load.models import weights_path

    argv = [
        str(BIN / "uvicorn"),
        "tests.load.peers.plain_fastapi:app",
        *("--host", HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools"),
        *("--no-access-log", "--log-level", "warning", "--app-dir", str(REPO)),
    ]
    env = {
        "FRAMEWORM_BENCH_MODEL": config.model,
        "FRAMEWORM_BENCH_WEIGHTS": str(weights_path(ws.registry, config.model)),
        **config.env,
    }
    return Launch(argv, env, REPO)


_SINK: list[str] = []


def otlp_sink_url() -> str:
    """A local OTLP/HTTP receiver that accepts and drops spans (started once, a daemon)."""
    if not _SINK:
        import http.server
        import threading

        class Sink(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer((HOST, 0), Sink)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _SINK.append(f"http://{HOST}:{server.server_address[1]}")
    return _SINK[0]


LAUNCHERS: dict[str, Callable[[ServerConfig, int, Workspace], Launch]] = {
    "frameworm": _frameworm,
    "plain-fastapi": _plain_fastapi,
}


# ---------------------------------------------------------------- processes and memory
def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any FRAMEWORM_* setting of ours, plus one-thread torch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEWORM_")}
    env.update(ONE_THREAD)
    env.update(extra)
    return env


def pinned(core: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def process_tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc/<pid>/task/<tid>/children."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{current}/task/{task}/children").read_text()
                    todo.extend(int(c) for c in text.split())
    return tree


def _kib_field(path: str, name: str) -> int:
    """A `Name:   123 kB` field of a /proc file, in bytes (0 when unreadable)."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class MemorySampler:
    """Samples the RSS (and PSS, when several processes) of a process tree every interval."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.peak_rss = self.peak_pss = self.max_procs = 0
        self.pids_seen: set[int] = set()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def sample(self) -> None:
        pids = process_tree(self.pid)
        rss = sum(_kib_field(f"/proc/{p}/status", "VmRSS:") for p in pids)
        pss = (
            sum(_kib_field(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids) if len(pids) > 1 else 0
        )
        with self._lock:
            self.pids_seen.update(pids)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.max_procs = max(self.max_procs, len(pids))

    def take(self) -> tuple[int, int, int]:
        """(peak RSS, peak PSS, most processes) since the last take, and start afresh."""
        self.sample()
        with self._lock:
            peaks = (self.peak_rss, self.peak_pss, self.max_procs)
            self.peak_rss = self.peak_pss = self.max_procs = 0
        return peaks

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def stop_process(proc: subprocess.Popen[bytes], also: set[int], grace_s: float = 15.0) -> None:
    """SIGTERM the server by pid, SIGKILL after grace_s; then any descendant left behind."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    for pid in also - {proc.pid}:
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def started(
    launch: Launch, log_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], MemorySampler]]:
    """The server pinned to SERVER_CORE, its memory sampled; stopped by pid at the end."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            pinned(SERVER_CORE, launch.argv),
            env=child_env(launch.env),
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sampler = MemorySampler(proc.pid)
    try:
        with sampler:
            yield proc, sampler
    finally:
        stop_process(proc, sampler.pids_seen)


# ---------------------------------------------------------------- HTTP
def http(
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"traffic only to {HOST}: {url}")
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}))
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float, poll_s: float = 0.05
) -> float | None:
    """Seconds until GET url answers 200 (None: timed out or the process died)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if proc.poll() is not None:
            return None
        status, _ = http(url, timeout=2)
        if status == 200:
            return time.perf_counter() - start
        time.sleep(poll_s)
    return None


def check_answer(
    base: str, body: bytes, headers: Mapping[str, str], expected: np.ndarray
) -> str | None:
    """None when the server's answer matches the in-process model; else what is wrong."""
    status, raw = http(f"{base}/infer", body, headers, timeout=30)
    if status != 200:
        return f"first answer: HTTP {status}: {raw[:300]!r}"
    try:
        actual = np.asarray(json.loads(raw)["outputs"]["y"], dtype=np.float32)
    except (ValueError, KeyError, TypeError) as exc:
        return f"first answer unreadable ({exc}): {raw[:300]!r}"
    if actual.shape != expected.shape:
        return f"first answer has shape {actual.shape}, expected {expected.shape}"
    if not np.allclose(actual, expected, atol=ATOL, rtol=RTOL):
        return f"first answer differs by up to {float(np.abs(actual - expected).max()):.3g}"
    return None


# ---------------------------------------------------------------- wrk
def run_wrk(
    url: str,
    connections: int,
    seconds: int,
    headers: Mapping[str, str],
    body_file: Path,
) -> WrkResult:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    env = {**os.environ, "FRAMEWORM_BENCH_BODY": str(body_file)}
    done = subprocess.run(
        pinned(LOAD_CORE, argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()[:500]}")
    return parse_wrk_output(done.stdout)


# ---------------------------------------------------------------- one run of each kind
@dataclass
class Options:
    configs: list[str]
    connections: list[int]
    warmup_s: int
    duration_s: int
    runs: int
    alone_s: float
    cold_starts: int
    ready_timeout_s: float
    out: Path
    keep: bool
    server_env: dict[str, str] = field(default_factory=dict)


MAX_RESTARTS = 2  # a server that exits mid-sweep (on a shared machine) is restarted this often


def bench_server(
    run: int,
    name: str,
    opts: Options,
    ws: Workspace,
    body_file: Path,
    expected: Mapping[str, np.ndarray],
) -> list[ServerRow]:
    """Start the configuration's server, check its answer, then wrk at each connection count.

    A server that exits before the sweep is done is reported and started again (at most
    MAX_RESTARTS times) for the connection counts still to measure; rows measured after a
    restart say so.
    """
    config = SERVER_CONFIGS[name]
    rows: list[ServerRow] = []
    todo = list(opts.connections)
    note = ""
    for attempt in range(1, MAX_RESTARTS + 2):
        todo, exit_note = _serve_levels(
            run, name, config, opts, ws, body_file, expected, todo, rows, attempt, note
        )
        if not todo:
            break
        note = f"after a restart ({exit_note})"
    rows += [ServerRow(run, name, c, None, 0, 0, 0, "not measured: " + note) for c in todo]
    return rows


def _serve_levels(
    run: int,
    name: str,
    config: ServerConfig,
    opts: Options,
    ws: Workspace,
    body_file: Path,
    expected: Mapping[str, np.ndarray],
    todo: list[int],
    rows: list[ServerRow],
    attempt: int,
    note: str,
) -> tuple[list[int], str]:
    """Measure the `todo` connection counts on one server; the counts left and why."""
    port = free_port()
    base = f"http://{HOST}:{port}"
    launch = LAUNCHERS[config.launcher](config, port, ws)
    launch.env.update(opts.server_env)
    log_path = ws.root / f"{name}-run{run}-{attempt}.log"
    what = config.description or config.launcher
    print(f"[run {run}] {name}: starting ({what}), log {log_path.name}", flush=True)
    with started(launch, log_path) as (proc, sampler):
        ready = wait_until(f"{base}/readyz", proc, opts.ready_timeout_s)
        if ready is None and proc.poll() is not None:
            return todo, f"exited {proc.returncode} before ready: {_tail(log_path, 200)}"
        if ready is None:
            problem: str | None = f"not ready within {opts.ready_timeout_s:.0f}s: {_tail(log_path)}"
        else:
            problem = check_answer(
                base, body_file.read_bytes(), config.headers, expected[config.model]
            )
        if problem is not None:
            print(f"[run {run}] {name}: FAILED: {problem}", flush=True)
            rows += [ServerRow(run, name, c, None, 0, 0, 0, problem) for c in todo]
            return [], ""
        print(f"[run {run}] {name}: ready in {ready:.1f}s, answer checked", flush=True)
        for i, connections in enumerate(todo):
            sampler.take()
            failure = ""
            result: WrkResult | None = None
            url = f"{base}/infer"
            try:
                if opts.warmup_s > 0:
                    run_wrk(url, connections, opts.warmup_s, config.headers, body_file)
                result = run_wrk(url, connections, opts.duration_s, config.headers, body_file)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                failure = str(exc)[:300]
            rss, pss, procs = sampler.take()
            if failure and proc.poll() is None and http(f"{base}/readyz", timeout=5)[0] != 200:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)  # e.g. draining after a SIGTERM from elsewhere
                if proc.poll() is None:
                    return todo[i:], f"server stopped answering during c={connections}"
            if proc.poll() is not None:
                why = f"server exited {proc.returncode} during c={connections}"
                print(f"    {why}; {failure}".rstrip("; "), flush=True)
                return todo[i:], why
            rows.append(
                ServerRow(
                    run, name, connections, result, rss, pss, procs, f"{failure} {note}".strip()
                )
            )
            print(f"    {rows[-1].one_line()}", flush=True)
    return [], ""


def bench_model_alone(run: int, opts: Options) -> list[AloneRow]:
    """The models in a separate process pinned to SERVER_CORE, one thread, no server."""
    print(f"[run {run}] model-alone", flush=True)
    argv = [sys.executable, "-m", "tests.load.bench", "--alone-worker", str(opts.alone_s)]
    done = subprocess.run(
        pinned(SERVER_CORE, argv),
        env=child_env({}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60 + 8 * (opts.alone_s + 2),
        check=False,
    )
    if done.returncode != 0:
        print(f"    model-alone FAILED: {done.stderr.strip()[-500:]}", flush=True)
        return []
    rows = [AloneRow(run=run, **json.loads(line)) for line in done.stdout.splitlines() if line]
    for row in rows:
        print(f"    {row.one_line()}", flush=True)
    return rows


def alone_worker(seconds: float) -> None:
    """Timed loops of each model at batch 1 and 32; one JSON line per case on stdout."""
    import torch

    from tests.load.models import BENCH_MODELS, build, digit_input

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    x1 = torch.from_numpy(digit_input())
    for key in BENCH_MODELS:
        module = build(key)
        for batch in (1, 32):
            x = x1.repeat(batch, 1)
            with torch.inference_mode():
                warm_until = time.perf_counter() + min(1.0, seconds / 2)
                while time.perf_counter() < warm_until:
                    module(x)
                times: list[float] = []
                stop_at = time.perf_counter() + seconds
                while time.perf_counter() < stop_at or len(times) < 20:
                    start = time.perf_counter()
                    module(x)
                    times.append(time.perf_counter() - start)
            row = {
                "model": key,
                "batch": batch,
                "calls": len(times),
                # From the median call: robust to the preemptions of a shared core.
                "samples_per_s": batch / statistics.median(times),
                "median_call_ms": statistics.median(times) * 1e3,
                "per_sample_ms": statistics.median(times) * 1e3 / batch,
            }
            print(json.dumps(row), flush=True)


def bench_cold_start(run: int, opts: Options, ws: Workspace) -> list[ColdRow]:
    """`frameworm serve` with the demo model (cnn-digits) from a seeded registry, to /readyz."""
    rows = []
    for attempt in range(1, opts.cold_starts + 1):
        port = free_port()
        base = f"http://{HOST}:{port}"
        env = {
            **FRAMEWORM_BASE,
            **LAYERS_OFF,
            "FRAMEWORM_REGISTRY": str(ws.demo_registry),
            "FRAMEWORM_MODEL": "cnn-digits",
            "FRAMEWORM_PORT": str(port),
            "FRAMEWORM_API_KEYS_FILE": str(ws.root / "api-keys.json"),
        }
        launch = Launch([str(BIN / "frameworm"), "serve"], env, ws.root)
        log_path = ws.root / f"cold-start-run{run}-{attempt}.log"
        start = time.perf_counter()
        with started(launch, log_path) as (proc, sampler):
            listening = wait_until(f"{base}/healthz", proc, opts.ready_timeout_s, poll_s=0.02)
            ready = wait_until(f"{base}/readyz", proc, opts.ready_timeout_s, poll_s=0.02)
            ready_s = None if ready is None else time.perf_counter() - start
            listening_s = None if listening is None else listening
            rss, pss, procs = sampler.take()
        note = "" if ready_s is not None else f"not ready: {_tail(log_path)}"
        rows.append(ColdRow(run, attempt, listening_s, ready_s, rss, pss, procs, note))
        print(f"    {rows[-1].one_line()}", flush=True)
    return rows


def _tail(path: Path, chars: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].replace("\n", " | ")
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- the sweep
def prepare_workspace(root: Path, need_demo: bool) -> Workspace:
    from models.registry import ModelRegistry
    from tests.load.models import register_benchmark_models

    ws = Workspace(root, root / "registry", root / "demo-registry")
    print(f"registering the benchmark models in {ws.registry}", flush=True)
    register_benchmark_models(ws.registry)
    if need_demo:
        from models.demo import seed_demo

        demo = ModelRegistry(ws.demo_registry)
        if not demo.list_models():
            seed_demo(demo, actor="frameworm-bench")
    return ws


def check_tools() -> list[str]:
    problems = []
    if shutil.which("wrk") is None:
        problems.append(
            "wrk is not installed. On Debian/Ubuntu: `sudo apt-get install -y wrk`; elsewhere "
            "build it from https://github.com/wg/wrk. This script installs nothing."
        )
    if shutil.which("taskset") is None:
        problems.append("taskset is missing (Debian package util-linux).")
    if not (BIN / "frameworm").exists():
        problems.append(f"{BIN / 'frameworm'} is missing: run this with the project venv's python.")
    cores = os.sched_getaffinity(0)
    if not {SERVER_CORE, LOAD_CORE} <= cores:
        problems.append(f"cores {SERVER_CORE} and {LOAD_CORE} are needed; allowed: {sorted(cores)}")
    return problems


def sweep(opts: Options) -> str:
    import torch

    from tests.load.models import BENCH_MODELS, build, digit_input, reference_output

    root = Path(tempfile.mkdtemp(prefix="frameworm-bench-"))
    started_at = datetime.now(UTC)
    server_rows: list[ServerRow] = []
    alone_rows: list[AloneRow] = []
    cold_rows: list[ColdRow] = []
    try:
        ws = prepare_workspace(root, "cold-start" in opts.configs)
        x = digit_input()
        body_file = root / "body.json"
        body_file.write_text(json.dumps({"inputs": {"x": x.tolist()}}))
        torch.set_num_threads(1)
        expected = {key: reference_output(build(key), x) for key in BENCH_MODELS}
        for run in range(1, opts.runs + 1):
            for name in opts.configs:
                if name == "model-alone":
                    alone_rows += bench_model_alone(run, opts)
                elif name == "cold-start":
                    print(f"[run {run}] cold-start", flush=True)
                    cold_rows += bench_cold_start(run, opts, ws)
                else:
                    server_rows += bench_server(run, name, opts, ws, body_file, expected)
    finally:
        if opts.keep:
            print(f"kept the work directory {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return render_report(
        meta=describe(opts, started_at, body_file_size=len(json.dumps(x.tolist()))),
        server_rows=server_rows,
        alone_rows=alone_rows,
        cold_rows=cold_rows,
        configs={n: SERVER_CONFIGS[n].description for n in opts.configs if n in SERVER_CONFIGS},
    )


def describe(opts: Options, started_at: datetime, body_file_size: int) -> dict[str, str]:
    import torch

    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=10, check=False, cwd=REPO
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "started": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["python -m tests.load.bench", *sys.argv[1:]]),
        "git": out(["git", "rev-parse", "--short", "HEAD"])
        + (" (uncommitted changes)" if out(["git", "status", "--porcelain"]) else ""),
        "machine": f"{platform.node()}, {os.cpu_count()} cores, {cpu}",
        "python / torch": f"{platform.python_version()} / {torch.__version__}",
        "wrk": (out(["wrk", "-v"]).splitlines() or ["?"])[0],
        "method": (
            f"server on core {SERVER_CORE} (torch 1 thread), wrk -t1 on core {LOAD_CORE}; "
            f"{opts.warmup_s}s warm-up discarded, {opts.duration_s}s measured; closed loop; "
            f"body {body_file_size} bytes of JSON (784 floats)"
        ),
    }


# ---------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load.bench", description=__doc__.split("\n\n")[0]
    )
    known = [*SERVER_CONFIGS, *MEASUREMENTS]
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated, in order; known: {', '.join(known)}",
    )
    parser.add_argument("--connections", default="1,16,64", help="comma-separated wrk -c values")
    parser.add_argument("--warmup", type=int, default=None, help="seconds, discarded (5)")
    parser.add_argument("--duration", type=int, default=None, help="seconds measured (20)")
    parser.add_argument("--quick", action="store_true", help="2 s warm-up, 5 s measured")
    parser.add_argument("--runs", type=int, default=2, help="times the whole sweep runs (2)")
    parser.add_argument("--alone-seconds", type=float, default=None, help="model-alone (5; 2)")
    parser.add_argument("--cold-starts", type=int, default=3, help="cold starts per run (3)")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds (120)")
    parser.add_argument("--out", type=Path, default=None, help="bench-results/<timestamp>.md")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra env setting for every server under load, e.g. FRAMEWORM_LOG_LEVEL=info",
    )
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--alone-worker", type=float, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in SERVER_CONFIGS and c not in MEASUREMENTS]
    if unknown:
        raise SystemExit(f"unknown configuration(s): {', '.join(unknown)} (see --list)")
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    if not connections or min(connections) < 1:
        raise SystemExit("--connections needs positive integers")
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    duration = args.duration if args.duration is not None else (5 if args.quick else 20)
    if duration < 1 or warmup < 0 or args.runs < 1:
        raise SystemExit("--duration >= 1, --warmup >= 0 and --runs >= 1 please")
    alone = args.alone_seconds if args.alone_seconds is not None else (2.0 if args.quick else 5.0)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Options(
        configs=configs,
        connections=connections,
        warmup_s=warmup,
        duration_s=duration,
        runs=args.runs,
        alone_s=alone,
        cold_starts=args.cold_starts,
        ready_timeout_s=args.ready_timeout,
        out=args.out or Path("bench-results") / f"{stamp}.md",
        keep=args.keep,
        server_env=dict(item.split("=", 1) for item in args.server_env if "=" in item),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.alone_worker is not None:
        alone_worker(args.alone_worker)
        return 0
    if args.list:
        for name, config in SERVER_CONFIGS.items():
            env = " ".join(f"{k}={v}" for k, v in config.env.items())
            print(f"{name:20} {config.launcher:14} {config.model}  {env}")
        for name in MEASUREMENTS:
            print(f"{name:20} (no server under load)")
        return 0
    opts = options(args)
    problems = check_tools()
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})  # this process stays off the server's core
    report = sweep(opts)
    print()
    print(report)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(report)
    print(f"written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
