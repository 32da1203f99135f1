"""GracefulShutdown in a service whose asyncio loop took SIGTERM with `loop.add_signal_handler`
(aiohttp, hypercorn): a real process, a real SIGTERM. The loop gets such a signal through its
wakeup fd whatever Python-level handler is installed, so `start()` takes over the loop's
callback: in-flight work finishes and the hooks run before the loop's own shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

PLAIN_LOOP = """
import asyncio, signal, sys
from app.production import GracefulShutdown

def say(line):
    print(line, flush=True)

async def main():
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # the service's own shutdown
    shutdown = GracefulShutdown(timeout=10)
    shutdown.register_handler(lambda: say("hook ran"))
    shutdown.start()

    async def work():
        async with shutdown.track_request():
            say("ready")
            await asyncio.sleep(1.0)
            say("work done")

    task = asyncio.create_task(work())
    await stop.wait()
    say("loop shutdown")
    await asyncio.sleep(0)
    say("work cancelled" if not task.done() else "work was finished")

asyncio.run(main())
"""

AIOHTTP_SERVICE = """
import asyncio, sys
from aiohttp import web
from app.production import GracefulShutdown

def say(line):
    print(line, flush=True)

shutdown = GracefulShutdown(timeout=10)
shutdown.register_handler(lambda: say("hook ran"))

async def slow(request):
    async with shutdown.track_request():
        await asyncio.sleep(1.0)
    return web.Response(text="done")

async def started(app):
    shutdown.start()  # aiohttp has already taken SIGINT and SIGTERM with add_signal_handler
    say("ready")

async def cleaned_up(app):
    say("aiohttp cleanup")

app = web.Application()
app.router.add_get("/slow", slow)
app.on_startup.append(started)
app.on_cleanup.append(cleaned_up)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, shutdown_timeout=5)
"""


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], wanted: str) -> None:
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line == wanted, (line, process.stderr.read() if process.stderr else "")


def test_a_plain_asyncio_loop_shuts_down_only_after_the_drain() -> None:
    process = spawn(PLAIN_LOOP)
    try:
        wait_for_line(process, "ready")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.splitlines() == ["work done", "hook ran", "loop shutdown", "work was finished"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_an_aiohttp_service_finishes_its_request_and_runs_the_hooks_before_its_cleanup() -> None:
    pytest.importorskip("aiohttp")
    port = free_port()
    process = spawn(AIOHTTP_SERVICE, str(port))
    try:
        wait_for_line(process, "ready")
        deadline = time.monotonic() + 10
        while True:  # the site listens just after on_startup
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/slow"
        answers: list[str] = []

        def call() -> None:
            with urllib.request.urlopen(url, timeout=10) as response:
                answers.append(response.read().decode())

        client = threading.Thread(target=call)
        client.start()
        time.sleep(0.3)  # the request is in flight
        process.send_signal(signal.SIGTERM)
        client.join(15)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert answers == ["done"]
    assert process.returncode == 0, err
    assert out.splitlines() == ["hook ran", "aiohttp cleanup"], err
