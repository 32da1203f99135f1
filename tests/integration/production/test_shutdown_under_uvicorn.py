"""GracefulShutdown in a user's own FastAPI app on plain `uvicorn.run`, as the checklist writes
it: a real process, a real SIGTERM. uvicorn installs its signal handlers with `signal.signal`
around `serve()`, so a `start()` at import sits under uvicorn's and one in the lifespan over it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.production.test_shutdown_on_an_event_loop import free_port

ROOT = Path(__file__).resolve().parents[3]

SERVICE = """
import asyncio, sys, time
from contextlib import asynccontextmanager
import uvicorn
from fastapi import FastAPI
from app.production import GracefulShutdown

def say(line):
    print(line, flush=True)

mode, port = sys.argv[1], int(sys.argv[2])
shutdown = GracefulShutdown(timeout=10)
service_loop = None

@shutdown.on_shutdown
def save_checkpoint():
    time.sleep(0.5)  # long enough to be cut short by an exit that does not wait
    say("sync hook ran")

@shutdown.on_shutdown
async def close_client():
    # A client made on the service's loop only works there.
    say("async hook on the service loop" if asyncio.get_running_loop() is service_loop
        else "async hook on another loop")

if mode == "import":
    shutdown.start()

@asynccontextmanager
async def lifespan(app):
    global service_loop
    service_loop = asyncio.get_running_loop()
    if mode == "lifespan":
        shutdown.start()
    say("ready")
    yield

app = FastAPI(lifespan=lifespan)

@app.get("/slow")
async def slow():
    async with shutdown.track_request():
        await asyncio.sleep(1.0)
    return {"ok": True}

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
say("uvicorn.run returned")
"""


def serve_and_stop(
    mode: str, sig: signal.Signals = signal.SIGTERM
) -> tuple[int, list[str], list[str], str]:
    """The exit code, the lines printed and the answers of a request in flight at `sig`,
    and what was written to stderr."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVICE), mode, str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    answers: list[str] = []
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        url = f"http://127.0.0.1:{port}/slow"

        def call() -> None:
            with urllib.request.urlopen(url, timeout=10) as response:
                answers.append(response.read().decode())

        caller = threading.Thread(target=call)
        while process.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        caller.start()
        time.sleep(0.3)  # the request is in flight
        process.send_signal(sig)
        out, err = process.communicate(timeout=30)
        caller.join(10)
    finally:
        process.kill()
    return process.returncode, out.splitlines(), answers, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_start_at_import_runs_every_hook_before_the_process_exits(sig: signal.Signals) -> None:
    """The drain thread was a daemon: uvicorn stopped, re-raised the signal to it and returned,
    and the interpreter's exit killed the drain mid-hook (exit 0, the hook never done).
    Ctrl-C's KeyboardInterrupt, raised at the exit, was printed as ignored (exit 0 again)."""
    returncode, lines, answers, err = serve_and_stop("import", sig)
    assert answers == ['{"ok":true}']
    assert "sync hook ran" in lines, lines
    assert returncode == -sig, err  # the default action, after the drain
    assert "Traceback" not in err, err


def test_start_in_the_lifespan_runs_async_hooks_on_the_service_loop() -> None:
    """Under uvicorn the signal arrives through `signal.signal`, and the drain thread ran async
    hooks on a private loop, where a client made on the service's loop fails."""
    returncode, lines, answers, _ = serve_and_stop("lifespan")
    assert answers == ['{"ok":true}']
    assert lines[:2] == ["sync hook ran", "async hook on the service loop"], lines
    assert returncode in (0, -signal.SIGTERM)


IMPATIENT = """
import time
from app.production import GracefulShutdown

shutdown = GracefulShutdown(timeout=20)
shutdown.register_handler(lambda: time.sleep(15))
shutdown.start()
shutdown.track_request().__enter__()  # work that never finishes: the drain waits 20 s
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def test_a_second_signal_during_the_drain_ends_the_process_at_once() -> None:
    """A second Ctrl-C chains to the default handler (KeyboardInterrupt); the process's exit
    must not then wait out the drain it was asked to cut short."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(IMPATIENT)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.communicate(timeout=30)  # reads the pipes to the end, and closes them
        assert time.monotonic() - started < 5
    finally:
        process.kill()
    assert process.returncode != 0
