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
import copy
import importlib.util
import json
import os
import platform
import re
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
from typing import Any

import numpy as np

from tests.load.repeat import WrkWorkload
from tests.load.repeat import workload as repeat_workload
from tests.load.report import (
    ALONE_BASELINE,
    CHANNELS_LAST,
    AloneRow,
    ColdRow,
    FixedRateRow,
    ServerRow,
    SoakRow,
    WrkResult,
    parse_wrk_output,
    render_report,
)

REPO = Path(__file__).resolve().parents[2]
# `frameworm serve` and uvicorn from the interpreter running this script (the project venv, or
# a GPU machine's python with the project on PYTHONPATH).
FRAMEWORM_SERVE = [sys.executable, "-m", "app.cli", "serve"]
UVICORN = [sys.executable, "-m", "uvicorn"]
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
# The key is an issued one, looked up in the server's key file and its secret's HMAC compared,
# as every client's is (write_bench_key); not the bootstrap key, which skips both.
BENCH_KEY_ID = "be4c4be4c4be4c40"
BENCH_KEY = f"fw_{BENCH_KEY_ID}_benchmark-secret-0123456789abcdef0123456789"
BENCH_PEPPER = "benchmark-pepper-0123456789abcdef0123456789"
OTLP_SINK = "sink"  # replaced by the sink's URL when the server is launched
EVERYTHING_ON = {
    "FRAMEWORM_AUTH_ENABLED": "true",
    "FRAMEWORM_API_KEY_PEPPER": BENCH_PEPPER,
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
    # "one-body": wrk_post.lua, the digit every time; "repeat": wrk_repeat.lua, repeated inputs
    # for the result cache (tests/load/repeat.py).
    workload: str = "one-body"


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
    # Peers (BENCHMARK.md's reference rows), each speaking Frameworm's /infer JSON.
    "plain-fastapi-cnn": ServerConfig(
        "cnn", launcher="plain-fastapi", description="async def, model per request"
    ),
    "plain-fastapi-mlp": ServerConfig(
        "mlp", launcher="plain-fastapi", description="async def, model per request"
    ),
    # The floor: uvicorn and a bare ASGI app answering a constant (the body is read).
    "http-floor": ServerConfig(
        "mlp", launcher="floor", description="bare ASGI app on uvicorn, constant answer"
    ),
    # Each in its own venv under .peers/ (`bash tests/load/peers/setup.sh`), serving the same
    # registered weights with dynamic batching of at most 32 requests / 5 ms, one worker.
    "litserve-cnn": ServerConfig(
        "cnn", launcher="litserve", description="LitServe, batch 32 / 5 ms, 1 worker"
    ),
    "litserve-mlp": ServerConfig(
        "mlp", launcher="litserve", description="LitServe, batch 32 / 5 ms, 1 worker"
    ),
    "torchserve-cnn": ServerConfig(
        "cnn", launcher="torchserve", description="TorchServe, batch 32 / 5 ms, 1 worker"
    ),
    "torchserve-mlp": ServerConfig(
        "mlp", launcher="torchserve", description="TorchServe, batch 32 / 5 ms, 1 worker"
    ),
}
# The result-cache workload (wrk_repeat.lua): most requests repeat one of a few inputs. Cache
# on vs off, everything else as cnn-batching / mlp-batching; the cache holds 10,000 entries.
CACHE_MEMORY = {"FRAMEWORM_RESULT_CACHE": "memory"}
SERVER_CONFIGS.update(
    {
        f"{model}-cache-{state}": ServerConfig(
            model,
            {**LAYERS_OFF, **BATCH_32, **(CACHE_MEMORY if state == "on" else {})},
            description=f"batch 32 / 5 ms, result cache {state}, repeated inputs",
            workload="repeat",
        )
        for model in ("cnn", "mlp")
        for state in ("on", "off")
    }
)
# Not one server per row under closed-loop load; fixed-rate and soak: tests/load/fixed_rate.py.
MEASUREMENTS = ("model-alone", "cold-start", "fixed-rate", "soak")
DEFAULT_CONFIGS = ("cnn-batching", "cnn-nobatch", "mlp-batching", "model-alone", "cold-start")


@dataclass(frozen=True)
class Launch:
    """What a launcher starts: the command (pinned to SERVER_CORE), its env and directory."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    # Where the server answers Frameworm's `/infer` JSON, and where GET answers 200 once ready.
    infer_path: str = "/infer"
    ready_path: str = "/readyz"
    # Run (same env and directory) before the SIGTERM by pid, for servers that stop their own
    # way, e.g. TorchServe's Java frontend: `torchserve --stop`.
    stop_argv: list[str] | None = None


class LaunchError(RuntimeError):
    """A launcher cannot start its server here, e.g. a peer's venv is missing; says why."""


@dataclass(frozen=True)
class Workspace:
    root: Path
    registry: Path  # the two benchmark models
    demo_registry: Path  # the demo models, for cold start

    @property
    def keys_file(self) -> Path:
        """The servers' API key file, holding BENCH_KEY."""
        return self.root / "api-keys.json"


def _frameworm(config: ServerConfig, port: int, ws: Workspace) -> Launch:
    from tests.load.models import BENCH_MODELS

    env = {
        **FRAMEWORM_BASE,
        "FRAMEWORM_REGISTRY": str(ws.registry),
        "FRAMEWORM_MODEL": BENCH_MODELS[config.model].name,
        "FRAMEWORM_PORT": str(port),
        "FRAMEWORM_API_KEYS_FILE": str(ws.keys_file),
        **config.env,
    }
    if env.get("FRAMEWORM_OTLP_ENDPOINT") == OTLP_SINK:
        env["FRAMEWORM_OTLP_ENDPOINT"] = otlp_sink_url()
    # cwd: a directory without a .env file, so only these settings apply.
    return Launch(list(FRAMEWORM_SERVE), env, ws.root)


def _plain_fastapi(config: ServerConfig, port: int, ws: Workspace) -> Launch:
    from tests.load.models import weights_path

    argv = [
        *UVICORN,
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


def _floor(config: ServerConfig, port: int, ws: Workspace) -> Launch:
    """peers/constant.py: uvicorn with a bare ASGI app, the HTTP round trip alone."""
    argv = [
        *UVICORN,
        "tests.load.peers.constant:app",
        *("--host", HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools"),
        *("--no-access-log", "--log-level", "warning", "--app-dir", str(REPO)),
    ]
    return Launch(argv, dict(config.env), REPO)


PEERS = REPO / ".peers"  # the peers' venvs, made by PEER_SETUP
PEER_SETUP = "bash tests/load/peers/setup.sh"
TORCHSERVE_HANDLER = Path(__file__).with_name("peers") / "torchserve" / "bench_handler.py"


def _peer_bin(peer: str, *tools: str) -> list[Path]:
    """The venv's tools (e.g. python), or a LaunchError naming the command that makes them."""
    paths = [PEERS / peer / "bin" / tool for tool in tools]
    missing = [os.path.relpath(p, REPO) for p in paths if not p.exists()]
    if missing:
        raise LaunchError(
            f"{', '.join(missing)} missing: make it with `{PEER_SETUP} {peer}` (repository root)"
        )
    return paths


def _peer_model_env(config: ServerConfig, ws: Workspace) -> dict[str, str]:
    """The model a peer loads (tests/load/peers/peer_model.py) and the repository on its path."""
    from tests.load.models import BENCH_MODELS, weights_path

    spec = BENCH_MODELS[config.model]
    return {
        # For models.families and tests.load.peers only; the peers never import `app`.
        "PYTHONPATH": str(REPO),
        "FRAMEWORM_BENCH_FAMILY": spec.family,
        "FRAMEWORM_BENCH_CONFIG": json.dumps(spec.config),
        "FRAMEWORM_BENCH_WEIGHTS": str(weights_path(ws.registry, config.model)),
    }


def _litserve(config: ServerConfig, port: int, ws: Workspace) -> Launch:
    """peers/litserve_server.py from .peers/litserve: batch 32 / 5 ms, one CPU worker."""
    (python,) = _peer_bin("litserve", "python")
    argv = [str(python), "-m", "tests.load.peers.litserve_server", "--host", HOST]
    # cwd: the work directory, so nothing LitServe writes lands in the repository.
    return Launch(
        [*argv, "--port", str(port)], {**_peer_model_env(config, ws), **config.env}, ws.root
    )


def _torchserve(config: ServerConfig, port: int, ws: Workspace) -> Launch:
    """TorchServe from .peers/torchserve: the handler in a .mar built now, batch 32 / 5 ms.

    Everything goes in a directory of the work directory: the .mar, config.properties (every
    port on 127.0.0.1, a free one each), the logs, the pid file of `torchserve` (TMPDIR) and the
    worker's socket (TEMP: the JVM's temp directory). The CLI runs in the foreground, so the
    Java frontend and its Python worker stay in the launched process tree (pinned, sampled);
    `torchserve --stop` ends them.
    """
    from tests.load.models import BENCH_MODELS, weights_path

    torchserve, archiver = _peer_bin("torchserve", "torchserve", "torch-model-archiver")
    if shutil.which("java") is None:
        raise LaunchError("TorchServe needs Java 17 or newer: `java` is not on PATH")
    spec = BENCH_MODELS[config.model]
    home = ws.root / f"torchserve-{config.model}-{port}"
    store = home / "model-store"
    store.mkdir(parents=True)
    (home / "bench-model.json").write_text(
        json.dumps({"family": spec.family, "config": spec.config})
    )
    batching = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 32, "maxBatchDelay": 5}
    (home / "model-config.yaml").write_text(
        "".join(f"{key}: {value}\n" for key, value in batching.items())
    )
    archive = [
        str(archiver),
        *("--model-name", spec.name, "--version", "1.0", "--handler", str(TORCHSERVE_HANDLER)),
        *("--serialized-file", str(weights_path(ws.registry, config.model))),
        *("--extra-files", str(home / "bench-model.json")),
        *("--config-file", str(home / "model-config.yaml"), "--export-path", str(store)),
    ]
    try:
        subprocess.run(archive, capture_output=True, text=True, timeout=300, check=True, cwd=home)
    except subprocess.CalledProcessError as exc:
        raise LaunchError(f"torch-model-archiver failed: {exc.stderr.strip()[-400:]}") from None
    except subprocess.TimeoutExpired:
        raise LaunchError("torch-model-archiver took over 300 s") from None
    models = {
        spec.name: {
            "1.0": {
                "defaultVersion": True,
                "marName": f"{spec.name}.mar",
                **batching,
                "responseTimeout": 120,
            }
        }
    }
    properties = {
        "inference_address": f"http://{HOST}:{port}",
        "management_address": f"http://{HOST}:{free_port()}",
        "metrics_address": f"http://{HOST}:{free_port()}",
        "grpc_inference_address": HOST,
        "grpc_inference_port": str(free_port()),
        "grpc_management_address": HOST,
        "grpc_management_port": str(free_port()),
        "model_store": str(store),
        "load_models": f"{spec.name}.mar",
        "models": json.dumps(models),
        "default_workers_per_model": "1",
        "disable_token_authorization": "true",
        "enable_envvars_config": "false",
        "install_py_dep_per_model": "false",
        # No psutil collector process started every minute on the server's core.
        "disable_system_metrics": "true",
    }
    ts_config = home / "config.properties"
    ts_config.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    env = {
        **_peer_model_env(config, ws),
        "TMPDIR": str(home),  # torchserve's pid file: this server's own, not /tmp's
        "TEMP": str(home),  # the JVM's temp directory: the worker's Unix socket
        "LOG_LOCATION": str(home / "logs"),
        "METRICS_LOCATION": str(home / "logs"),
        **config.env,
    }
    argv = [str(torchserve), "--start", "--foreground", "--ncs", "--ts-config", str(ts_config)]
    log_config = TORCHSERVE_HANDLER.with_name("log4j2.xml")  # warnings only
    return Launch(
        [*argv, "--model-store", str(store), "--log-config", str(log_config)],
        env,
        home,
        infer_path=f"/predictions/{spec.name}",
        ready_path="/ping",
        stop_argv=[str(torchserve), "--stop", "--foreground"],
    )


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
    "floor": _floor,
    "litserve": _litserve,
    "torchserve": _torchserve,
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
        tree = set(process_tree(proc.pid)) | sampler.pids_seen
        if launch.stop_argv is not None and proc.poll() is None:
            run_stop_command(launch.stop_argv, launch)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        stop_process(proc, tree)


def run_stop_command(argv: list[str], launch: Launch, timeout_s: float = 75.0) -> None:
    """The server's own stop command (e.g. `torchserve --stop`); stop_process does the rest."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            argv,
            env=child_env(launch.env),
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )


# ---------------------------------------------------------------- HTTP
# No proxy from the environment (http_proxy): the servers are on this machine, and wrk, which
# reads none, goes straight to them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
        with _DIRECT.open(request, timeout=timeout) as response:
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
    base: str,
    body: bytes,
    headers: Mapping[str, str],
    expected: np.ndarray,
    path: str = "/infer",
) -> str | None:
    """None when the server's answer (POST base+path) matches the in-process model; else why."""
    status, raw = http(f"{base}{path}", body, headers, timeout=30)
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
    workload: WrkWorkload | None = None,
) -> WrkResult:
    """wrk pinned to LOAD_CORE: wrk_post.lua with body_file, or the workload's script."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(workload.script if workload else LUA_SCRIPT),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    env = {
        **os.environ,
        "FRAMEWORM_BENCH_BODY": str(body_file),
        **(workload.env if workload else {}),
    }
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


def measure_wrk(
    url: str,
    connections: int,
    warmup_s: int,
    seconds: int,
    headers: Mapping[str, str],
    body_file: Path,
    workload: WrkWorkload | None = None,
    before_measured: Callable[[], None] | None = None,
) -> WrkResult:
    """A warm-up run (discarded), a pause, then the measured run.

    wrk leaves the warm-up's last requests in flight when it exits; the pause lets the server
    finish them, so the measured run does not start queued behind work nobody waits for.
    `before_measured` runs right before the measured run starts.
    """
    if warmup_s > 0:
        run_wrk(url, connections, warmup_s, headers, body_file, workload)
        time.sleep(SETTLE_S)
    if before_measured is not None:
        before_measured()
    return run_wrk(url, connections, seconds, headers, body_file, workload)


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid`, by thread id."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                # Fields after the ")" closing the command name: state is the first, then
                # utime and stime are the 12th and 13th (fields 14 and 15 of proc(5)).
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


class ThreadCpu:
    """A server's CPU per request across the measured run, split as the report shows it: the
    main thread (the event loop) and every other thread (the forward pass, log and span
    exporters). Python does not name OS threads, so the main thread is the one told apart."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start: dict[int, float] = {}

    def start(self) -> None:
        self._start = thread_cpu_s(self.pid)

    def per_request_ms(self, requests: int) -> tuple[float, float] | None:
        end = thread_cpu_s(self.pid)
        if requests <= 0 or not self._start or self.pid not in end:
            return None
        spent = {tid: s - self._start.get(tid, 0.0) for tid, s in end.items()}
        loop = spent.pop(self.pid)
        return loop / requests * 1e3, sum(spent.values()) / requests * 1e3


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
    device: str = "cpu"  # where servers and the model alone run
    # fixed-rate and soak (tests/load/fixed_rate.py), and the result-cache workload
    fixed_rate_config: str = "cnn-everything-on"
    soak_config: str = "cnn-everything-on"
    soak_minutes: float = 10.0
    open_connections: int = 256
    hot_inputs: int = 64
    repeat_fraction: float = 0.9


def wrk_workload(config: ServerConfig, opts: Options, body_file: Path) -> WrkWorkload | None:
    """The configuration's wrk workload; None: wrk_post.lua with body_file."""
    if config.workload == "repeat":
        return repeat_workload(body_file.parent, opts.hot_inputs, opts.repeat_fraction)
    return None


SETTLE_S = 1.0  # between a warm-up and its measured run
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
    try:
        launch = LAUNCHERS[config.launcher](config, port, ws)
    except LaunchError as exc:
        print(f"[run {run}] {name}: NOT STARTED: {exc}", flush=True)
        rows += [ServerRow(run, name, c, None, 0, 0, 0, f"not started: {exc}") for c in todo]
        return [], ""
    launch.env.update(opts.server_env)
    log_path = ws.root / f"{name}-run{run}-{attempt}.log"
    what = config.description or config.launcher
    print(f"[run {run}] {name}: starting ({what}), log {log_path.name}", flush=True)
    with started(launch, log_path) as (proc, sampler):
        ready = wait_until(f"{base}{launch.ready_path}", proc, opts.ready_timeout_s)
        if ready is None and proc.poll() is not None:
            return todo, f"exited {proc.returncode} before ready: {_tail(log_path, 200)}"
        if ready is None:
            problem: str | None = f"not ready within {opts.ready_timeout_s:.0f}s: {_tail(log_path)}"
        elif config.launcher == "floor":
            problem = None  # a constant answer by design: nothing to check
        else:
            problem = check_answer(
                base,
                body_file.read_bytes(),
                config.headers,
                expected[config.model],
                launch.infer_path,
            )
        if problem is not None:
            print(f"[run {run}] {name}: FAILED: {problem}", flush=True)
            rows += [ServerRow(run, name, c, None, 0, 0, 0, problem) for c in todo]
            return [], ""
        checked = "a constant answer" if config.launcher == "floor" else "answer checked"
        print(f"[run {run}] {name}: ready in {ready:.1f}s, {checked}", flush=True)
        for i, connections in enumerate(todo):
            sampler.take()
            failure = ""
            result: WrkResult | None = None
            url = f"{base}{launch.infer_path}"
            # Frameworm serves from one process (the launched pid, through taskset's exec).
            cpu = ThreadCpu(proc.pid) if config.launcher == "frameworm" else None
            try:
                load = (config.headers, body_file, wrk_workload(config, opts, body_file))
                result = measure_wrk(
                    url,
                    connections,
                    opts.warmup_s,
                    opts.duration_s,
                    *load,
                    before_measured=cpu.start if cpu is not None else None,
                )
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                failure = str(exc)[:300]
            cpu_ms = cpu.per_request_ms(result.requests) if cpu and result else None
            rss, pss, procs = sampler.take()
            ready_url = f"{base}{launch.ready_path}"
            if failure and proc.poll() is None and http(ready_url, timeout=5)[0] != 200:
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
                    run,
                    name,
                    connections,
                    result,
                    rss,
                    pss,
                    procs,
                    f"{failure} {note}".strip(),
                    cpu_ms,
                )
            )
            print(f"    {rows[-1].one_line()}", flush=True)
    return [], ""


def bench_model_alone(run: int, opts: Options) -> list[AloneRow]:
    """The models in a separate process pinned to SERVER_CORE, one thread, no server."""
    print(f"[run {run}] model-alone", flush=True)
    # 2 models x 2 batch sizes, times the variants (CNN: 2 on the CPU; 4 and up to 4
    # compilations on CUDA).
    cases, compile_s = (6, 0) if opts.device == "cpu" else (16, 600)
    argv = [sys.executable, "-m", "tests.load.bench", "--alone-worker", str(opts.alone_s)]
    argv += ["--device", opts.device]
    done = subprocess.run(
        pinned(SERVER_CORE, argv),
        env=child_env({}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60 + 2 * cases * (opts.alone_s + 2) + compile_s,
        check=False,
    )
    if done.returncode != 0:
        print(f"    model-alone FAILED: {done.stderr.strip()[-500:]}", flush=True)
        return []
    rows = [AloneRow(run=run, **json.loads(line)) for line in done.stdout.splitlines() if line]
    for row in rows:
        print(f"    {row.one_line()}", flush=True)
    return rows


def alone_worker(seconds: float, device_name: str = "cpu") -> None:
    """Timed calls of each model at batch 1 and 32; one JSON line per case on stdout.

    On CPU: the model as registered (eager, float32). On CUDA also what might pay there: half
    precision, the forward captured in a CUDA graph, and torch.compile. Each CUDA call is timed
    to its synchronisation, its input already on the device.
    """
    import torch

    from app.inference.allocator import retain_freed_memory
    from app.inference.runner import set_cuda_math
    from tests.load.models import BENCH_MODELS, build, digit_input

    retain_freed_memory()  # as the server does: the limit is the model at its best
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    device = torch.device(device_name)
    if device.type == "cuda":
        set_cuda_math(allow_tf32=False)  # the server's default
    x1 = torch.from_numpy(digit_input()).to(device)
    for key in BENCH_MODELS:
        for batch in (1, 32):
            x = x1.repeat(batch, 1)
            for variant, call in alone_variants(build(key).to(device), x):
                times = time_calls(call, seconds, device)
                row = {
                    "model": key,
                    "variant": variant,
                    "batch": batch,
                    "calls": len(times),
                    # From the median call: robust to the preemptions of a shared core.
                    "samples_per_s": batch / statistics.median(times),
                    "median_call_ms": statistics.median(times) * 1e3,
                    "per_sample_ms": statistics.median(times) * 1e3 / batch,
                }
                print(json.dumps(row), flush=True)


def alone_variants(module: Any, x: Any) -> Iterator[tuple[str, Callable[[], object]]]:
    """(variant, call) pairs: eager float32 everywhere; on the CPU, a convolutional model
    channels-last too (as the server runs it); on CUDA the float16 variants."""
    import torch

    yield ALONE_BASELINE, _inference(module, x)
    if x.device.type != "cuda":
        if any(p.dim() == 4 for p in module.parameters()):
            nhwc = copy.deepcopy(module).to(memory_format=torch.channels_last)
            yield CHANNELS_LAST, _inference(nhwc, x)
        return
    half, x16 = module.half(), x.half()
    yield "eager float16", _inference(half, x16)
    with torch.inference_mode():
        static_x = x16.clone()
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up off the capture stream, as capture requires
            for _ in range(3):
                half(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            half(static_x)
    yield "CUDA graph float16", graph.replay
    try:
        compiled = torch.compile(half, dynamic=False)
        call = _inference(compiled, x16)
        call()  # the compilation, outside the timing
    except Exception as exc:  # a compiler missing on the machine: say so, go on
        print(f"torch.compile unavailable: {str(exc)[:200]}", file=sys.stderr)
        return
    yield "torch.compile float16", call


def _inference(module: Any, x: Any) -> Callable[[], object]:
    import torch

    def call() -> object:
        with torch.inference_mode():
            return module(x)

    return call


def time_calls(call: Callable[[], object], seconds: float, device: Any) -> list[float]:
    """Per-call seconds over `seconds` after a warm-up; CUDA calls end at a synchronisation."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    warm_until = time.perf_counter() + min(1.0, seconds / 2)
    while time.perf_counter() < warm_until:
        call()
    sync()
    times: list[float] = []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at or len(times) < 20:
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times


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
            "FRAMEWORM_API_KEYS_FILE": str(ws.keys_file),
            **opts.server_env,
        }
        launch = Launch(list(FRAMEWORM_SERVE), env, ws.root)
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
def write_bench_key(keys_file: Path) -> None:
    """Add BENCH_KEY's record (infer scope, no rate limit of its own) to a key file, as
    `frameworm keys create` would have stored it: the HMAC of its secret under BENCH_PEPPER."""
    import hashlib
    import hmac

    from app.production.key_records import KeyRecord
    from app.production.keystore import FileKeyStore

    store = FileKeyStore(keys_file)
    if store.get(BENCH_KEY_ID) is None:
        secret = BENCH_KEY.split("_", 2)[2]
        digest = hmac.new(BENCH_PEPPER.encode(), secret.encode(), hashlib.sha256).hexdigest()
        store.add(KeyRecord(BENCH_KEY_ID, "benchmark", ("infer",), time.time(), digest))


def prepare_workspace(root: Path, need_demo: bool) -> Workspace:
    from models.registry import ModelRegistry
    from tests.load.models import register_benchmark_models

    ws = Workspace(root, root / "registry", root / "demo-registry")
    print(f"registering the benchmark models in {ws.registry}", flush=True)
    register_benchmark_models(ws.registry)
    write_bench_key(ws.keys_file)
    if need_demo:
        from models.demo import seed_demo

        demo = ModelRegistry(ws.demo_registry)
        if not demo.list_models():
            seed_demo(demo, actor="frameworm-bench")
    return ws


def device_problem(device: str) -> str | None:
    """Why `--device` cannot be benchmarked here: found before any server starts (each one
    exited 1 on it, and the sweep ended in a traceback)."""
    if device == "cpu":
        return None
    if not re.fullmatch(r"cuda(:[0-9]+)?", device):
        return f"--device {device!r}: use cpu, cuda or cuda:N"
    import torch

    if not torch.cuda.is_available():
        return f"--device {device}: CUDA is not available on this machine"
    if int(device.partition(":")[2] or 0) >= torch.cuda.device_count():
        return f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def check_tools() -> list[str]:
    problems = []
    if shutil.which("wrk") is None:
        problems.append(
            "wrk is not installed. On Debian/Ubuntu: `sudo apt-get install -y wrk`; elsewhere "
            "build it from https://github.com/wg/wrk. This script installs nothing."
        )
    if shutil.which("taskset") is None:
        problems.append("taskset is missing (Debian package util-linux).")
    if importlib.util.find_spec("app.cli") is None or importlib.util.find_spec("uvicorn") is None:
        problems.append("Frameworm is not importable: run this with the project venv's python.")
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
    fixed_rows: list[FixedRateRow] = []
    soak_rows: list[SoakRow] = []
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
                elif name == "fixed-rate":
                    from tests.load.fixed_rate import bench_fixed_rate

                    capacity_rows, fixed = bench_fixed_rate(run, opts, ws, body_file, expected)
                    server_rows, fixed_rows = server_rows + capacity_rows, fixed_rows + fixed
                elif name == "soak":
                    from tests.load.fixed_rate import bench_soak

                    capacity_rows, soaks = bench_soak(run, opts, ws, body_file, expected)
                    server_rows, soak_rows = server_rows + capacity_rows, soak_rows + soaks
                else:
                    server_rows += bench_server(run, name, opts, ws, body_file, expected)
    finally:
        if opts.keep:
            print(f"kept the work directory {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return render_report(
        meta=describe(opts, started_at, body_file_size=len(json.dumps(x.tolist())))
        | workload_notes(opts),
        server_rows=server_rows,
        alone_rows=alone_rows,
        cold_rows=cold_rows,
        configs={n: SERVER_CONFIGS[n].description for n in under_load(opts) if n in SERVER_CONFIGS},
        fixed_rows=fixed_rows,
        soak_rows=soak_rows,
    )


def under_load(opts: Options) -> list[str]:
    """The server configurations the run puts under load, measurements' servers included."""
    names = [n for n in opts.configs if n in SERVER_CONFIGS]
    if "fixed-rate" in opts.configs:
        names.append(opts.fixed_rate_config)
    if "soak" in opts.configs:
        names.append(opts.soak_config)
    return list(dict.fromkeys(names))


def workload_notes(opts: Options) -> dict[str, str]:
    """Report lines on the open-loop runs and the repeated-input workload, when they ran."""
    from tests.load import fixed_rate

    notes = {}
    if "fixed-rate" in opts.configs or "soak" in opts.configs:
        notes["open loop"] = (
            f"capacity = 2xx/s of wrk at {fixed_rate.CAPACITY_CONNECTIONS} connections; then "
            f"tests/load/openloop.py in this process (core {LOAD_CORE}), up to "
            f"{opts.open_connections} keep-alive connections, {fixed_rate.TIMEOUT_S:g} s "
            f"timeout per request; fixed-rate: {fixed_rate.FIXED_RATE_FRACTION:.0%} of capacity "
            f"for {opts.duration_s} s; soak: {fixed_rate.SOAK_FRACTION:.0%} of capacity "
            f"(measured over {min(fixed_rate.SOAK_CAPACITY_S, opts.duration_s)} s) for "
            f"{opts.soak_minutes:g} min"
        )
    if any(SERVER_CONFIGS[n].workload == "repeat" for n in opts.configs if n in SERVER_CONFIGS):
        notes["repeated inputs"] = (
            f"the *-cache-* rows use wrk_repeat.lua: {opts.repeat_fraction:.0%} of requests "
            f"repeat one of {opts.hot_inputs} seeded inputs (round robin), the rest are unique "
            "inputs; the memory cache holds 10,000 entries (the default), the hot set fits"
        )
    return notes


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
        "device": opts.device
        + (f" ({torch.cuda.get_device_name(opts.device)})" if opts.device != "cpu" else ""),
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
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (the method), or cuda: servers, the plain endpoint and the model alone on it",
    )
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--alone-worker", type=float, default=None, help=argparse.SUPPRESS)
    add_workload_args(parser)
    return parser.parse_args(argv)


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """Options of fixed-rate, soak and the repeated-input (result cache) workload."""
    group = parser.add_argument_group("open loop (fixed-rate, soak) and repeated inputs")
    group.add_argument(
        "--fixed-rate-config",
        default="cnn-everything-on",
        help="server of `fixed-rate` (cnn-everything-on)",
    )
    group.add_argument(
        "--soak-config", default="cnn-everything-on", help="server of `soak` (cnn-everything-on)"
    )
    group.add_argument("--soak-minutes", type=float, default=10.0, help="soak length (10)")
    group.add_argument("--open-connections", type=int, default=256, help="open-loop pool (256)")
    group.add_argument(
        "--hot-inputs", type=int, default=64, help="*-cache-*: inputs that repeat (64)"
    )
    group.add_argument(
        "--repeat-fraction", type=float, default=0.9, help="*-cache-*: share of repeats (0.9)"
    )


def workload_options(args: argparse.Namespace) -> dict[str, Any]:
    """add_workload_args' values for Options, checked."""
    for config in (args.fixed_rate_config, args.soak_config):
        if config not in SERVER_CONFIGS:
            raise SystemExit(f"unknown server configuration {config!r} (see --list)")
        if SERVER_CONFIGS[config].workload != "one-body":
            raise SystemExit(f"{config}: the open loop sends the one digit body, not repeats")
    if args.soak_minutes <= 0 or args.open_connections < 1 or args.hot_inputs < 1:
        raise SystemExit("--soak-minutes > 0, --open-connections >= 1, --hot-inputs >= 1 please")
    if not 0 <= args.repeat_fraction <= 1:
        raise SystemExit("--repeat-fraction is a share: 0 to 1")
    return {
        "fixed_rate_config": args.fixed_rate_config,
        "soak_config": args.soak_config,
        "soak_minutes": args.soak_minutes,
        "open_connections": args.open_connections,
        "hot_inputs": args.hot_inputs,
        "repeat_fraction": args.repeat_fraction,
    }


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
    if bad := [item for item in args.server_env if "=" not in item]:
        raise SystemExit(f"--server-env takes NAME=VALUE, not {bad[0]!r}")
    server_env = dict(item.split("=", 1) for item in args.server_env)
    if args.device != "cpu":  # Frameworm's setting, and the plain endpoint's
        server_env = {
            "FRAMEWORM_DEVICE": args.device,
            "FRAMEWORM_BENCH_DEVICE": args.device,
            **server_env,
        }
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
        server_env=server_env,
        device=args.device,
        **workload_options(args),
    )


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.alone_worker is not None:
        alone_worker(args.alone_worker, args.device)
        return 0
    if args.list:
        for name, config in SERVER_CONFIGS.items():
            env = " ".join(f"{k}={v}" for k, v in config.env.items())
            print(f"{name:20} {config.launcher:14} {config.model}  {env}")
        for name in MEASUREMENTS:
            print(f"{name:20} (a measurement; see --help)")
        return 0
    opts = options(args)
    problems = check_tools() + [p for p in [device_problem(opts.device)] if p is not None]
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})  # this process stays off the server's core
    # A SIGTERM (or a closed terminal) unwinds like Ctrl-C: the servers and wrk are stopped by
    # pid and the work directory removed, where the default action left them all running.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    report = sweep(opts)
    print()
    print(report)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(report)
    print(f"written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
