"""What the app costs a request, without the network: the ASGI app driven in-process.

    taskset -c 0 .venv/bin/python -m tests.load.profile_app --model mlp --layers on,off
    taskset -c 0 .venv/bin/python -m tests.load.profile_app --model mlp --layers on --profile 25

Builds the app the way `frameworm serve` does (create_app + its lifespan), with the benchmark's
"everything on" or "layers off" settings, registers the benchmark models in a temporary
registry, and sends `--requests` POST /infer from `--concurrency` tasks straight into the ASGI
callable: no sockets, no HTTP parser, so the figures are the app's own (middleware, routing,
codec, batcher, thread hop, model). CPU time per request (this process, all threads) is
printed beside wall time: it is what to compare on a busy machine. With `--profile N`, cProfile
prints the N most expensive functions by own time (py-spy, `py-spy record -f raw -- python -m
tests.load.profile_app ...`, sees the forward thread too). Run it pinned to one core, with
nothing else running, and compare rows of one run.

With `--bytecodes N`, the measured run counts the Python bytecodes the event loop's thread
executes a request, and prints the N functions that execute most: a count that the machine's
noise does not move (two runs of one configuration agree within a few bytecodes, batches
permitting), so a change to the per-request path can be priced exactly. It is a count, not a
time: here a bytecode of the hardening layers cost about 0.1 us, and C work (orjson, numpy) is
not counted at all.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import logging
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import orjson
import uvloop

from app.config import Settings
from app.main import create_app
from app.telemetry.logs import configure_logging
from tests.load.bench import (
    BENCH_KEY,
    EVERYTHING_ON,
    LAYERS_OFF,
    ONE_THREAD,
    otlp_sink_url,
    write_bench_key,
)
from tests.load.models import BENCH_MODELS, digit_input, register_benchmark_models

# "on" and "off" are the benchmark's; the others are "off" plus one layer, to price each alone.
LAYERS = {
    "on": EVERYTHING_ON,
    "off": LAYERS_OFF,
    "auth": {
        **LAYERS_OFF,
        **{k: v for k, v in EVERYTHING_ON.items() if "AUTH" in k or "KEY" in k},
    },
    "ratelimit": {
        **LAYERS_OFF,
        **{k: v for k, v in EVERYTHING_ON.items() if k.startswith("FRAMEWORM_RATE_LIMIT")},
    },
    "metrics": {**LAYERS_OFF, "FRAMEWORM_METRICS_ENABLED": "true"},
    "tracing": {**LAYERS_OFF, **{k: v for k, v in EVERYTHING_ON.items() if "OTLP" in k}},
    "logs": {**LAYERS_OFF, "FRAMEWORM_LOG_LEVEL": "info", "FRAMEWORM_LOG_FORMAT": "json"},
}


def settings_for(registry: Path, model: str, layers: str, batch: int) -> Settings:
    env: dict[str, str] = dict(LAYERS[layers])
    if env.get("FRAMEWORM_OTLP_ENDPOINT"):
        env["FRAMEWORM_OTLP_ENDPOINT"] = otlp_sink_url()
    values: dict[str, Any] = {
        k.removeprefix("FRAMEWORM_").lower(): v
        for k, v in env.items()
        if k.startswith("FRAMEWORM_")
    }
    values.update(
        registry=str(registry),
        model=BENCH_MODELS[model].name,
        env="development",
        seed_demo=False,
        max_batch_size=batch,
        max_batch_delay_ms=5,
        result_cache="off",
        torch_threads=1,  # as the benchmark's servers: one core, no OpenMP pool spinning
        api_keys_file=str(registry.parent / "keys.json"),
    )
    return Settings(_env_file=None, **values)


class BytecodeCount:
    """The bytecodes this thread executes inside the block, by code object (sys.settrace with
    opcode events). Frames already running when it starts are not counted."""

    def __init__(self) -> None:
        self.counts: collections.Counter[CodeType] = collections.Counter()

    def __enter__(self) -> BytecodeCount:
        self._previous = sys.gettrace()  # coverage's, under the test suite: put back after
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(self._previous)

    def _trace(self, frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.counts[frame.f_code] += 1
        return self._trace

    def table(self, per: int, top: int) -> str:
        """The total and the `top` code objects, in bytecodes each `per` (requests)."""
        lines = [f"bytecodes a request: {sum(self.counts.values()) / per:,.0f}"]
        for code, count in self.counts.most_common(top):
            where = code.co_filename.split("site-packages/")[-1].removeprefix(f"{Path.cwd()}/")
            lines.append(f"{count / per:9,.1f}  {where}:{code.co_firstlineno} {code.co_qualname}")
        return "\n".join(lines)


class Driver:
    """Sends requests into an ASGI app the way uvicorn would, and counts the answers."""

    def __init__(self, app: Any, state: Mapping[str, Any], body: bytes, headers: list[Any]):
        self.app, self.state, self.body = app, state, body
        self.headers = [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]
        self.statuses: dict[int, int] = {}

    async def one(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/infer",
            "raw_path": b"/infer",
            "root_path": "",
            "query_string": b"",
            "headers": self.headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": dict(self.state),
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.statuses[message["status"]] = self.statuses.get(message["status"], 0) + 1

        await self.app(scope, receive, send)

    async def run(self, requests: int, concurrency: int) -> tuple[float, float]:
        """Wall and CPU seconds (this process, all threads) to serve `requests`."""
        per_task = requests // concurrency

        async def worker() -> None:
            for _ in range(per_task):
                await self.one()

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, time.process_time() - cpu


async def measure(args: argparse.Namespace, layers: str, registry: Path) -> None:
    settings = settings_for(registry, args.model, layers, args.batch)
    # As `frameworm serve` logs, into /dev/null: the formatting is paid, not the terminal.
    configure_logging(settings.log_format, settings.log_level)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115
    app = create_app(settings)
    body = orjson.dumps({"inputs": {"x": digit_input().reshape(1, -1).tolist()}})
    headers = [(b"x-api-key", BENCH_KEY.encode())] if settings.auth_enabled else []
    async with app.router.lifespan_context(app) as state:
        assert state is not None
        host = state["host"]
        while host.runner is None:
            if host.state == "failed":
                raise SystemExit("the model failed to load")
            await asyncio.sleep(0.05)
        driver = Driver(app, state, body, headers)
        await driver.run(min(args.requests // 5, 2000), args.concurrency)  # warm-up
        driver.statuses.clear()
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        bytecodes = BytecodeCount() if args.bytecodes else None
        with bytecodes or contextlib.nullcontext():
            elapsed, cpu = await driver.run(args.requests, args.concurrency)
        if profiler is not None:
            profiler.disable()
        done = sum(driver.statuses.values())
        print(
            f"{args.model} layers {layers:3} c={args.concurrency:<3} batch {args.batch:<2} "
            f"{done / elapsed:9,.0f} req/s  {elapsed / done * 1e6:7.1f} us/request  "
            f"CPU {cpu / done * 1e6:7.1f} us/request  "
            f"statuses {driver.statuses}",
            flush=True,
        )
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
        if bytecodes is not None:
            print(bytecodes.table(done, args.bytecodes), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(BENCH_MODELS), default="mlp")
    parser.add_argument("--layers", default="on,off", help=f"comma-separated: {', '.join(LAYERS)}")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--bytecodes", type=int, default=0, metavar="N")
    args = parser.parse_args()
    os.environ.update(ONE_THREAD)
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "registry"
        register_benchmark_models(registry)
        write_bench_key(registry.parent / "keys.json")
        for layers in args.layers.split(","):
            # uvloop, as `frameworm serve` runs: asyncio's pure-Python loop would count its own
            # timer and callback bytecodes, which the server runs in C.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(measure(args, layers, registry))


if __name__ == "__main__":
    main()
