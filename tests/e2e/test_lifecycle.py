"""Startup, drain and a model that cannot load, each on its own `frameworm serve` process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from models.demo import seed_demo
from models.registry import ModelRegistry
from tests.support import free_port, skip_unless_ci
from tests.support.server import FRAMEWORM, ServerProcess, server_env, start_server

READY_WITHIN_S = 20.0


@dataclass
class Polls:
    """What /healthz and /readyz answered, poll by poll, from the moment the process started."""

    healthz: list[int] = field(default_factory=list)
    readyz: list[int] = field(default_factory=list)
    ready_after_s: float | None = None
    last_readyz_verbose: dict[str, object] = field(default_factory=dict)


def poll(server: ServerProcess, until: float, *, stop_when_ready: bool = True) -> Polls:
    """Poll both probes until the deadline, the process exits or (optionally) it is ready."""
    polls = Polls()
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=1.0) as client:
        while time.monotonic() < until and server.process.poll() is None:
            try:
                health = client.get("/healthz").status_code
                ready = client.get("/readyz?verbose")
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            polls.healthz.append(health)
            polls.readyz.append(ready.status_code)
            polls.last_readyz_verbose = ready.json()
            if ready.status_code == 200 and polls.ready_after_s is None:
                polls.ready_after_s = time.monotonic() - started
                if stop_when_ready:
                    break
            time.sleep(0.05)
    return polls


def test_a_fresh_server_is_ready_within_20s_and_live_throughout(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        polls = poll(server, time.monotonic() + READY_WITHIN_S)
        during_load = [h for h, r in zip(polls.healthz, polls.readyz, strict=True) if r != 200]
    finally:
        server.terminate()
    assert polls.ready_after_s is not None, server.logs()
    assert polls.healthz and set(polls.healthz) == {200}
    assert during_load, "the probes never saw the model loading"
    assert set(polls.readyz[:-1]) == {503}
    assert (tmp_path / "registry" / "cnn-digits").is_dir()  # it seeded the demo models


def test_sigterm_turns_readyz_503_keeps_serving_through_the_drain_and_exits_0(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path, env={"FRAMEWORM_DRAIN_DELAY_S": "1.5"})
    try:
        server.wait_ready()
        server.process.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=server.url, timeout=1.0) as client:
            ready = client.get("/readyz?verbose")
            live = client.get("/healthz")
        code = server.process.wait(15)
    finally:
        server.terminate()
    assert ready.status_code == 503
    assert ready.json()["checks"]["draining"]["ok"] is False
    assert live.status_code == 200
    assert code == 0, server.logs()


def test_a_plain_sigterm_exits_0(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        server.wait_ready()
    finally:
        code = server.terminate()
    assert code == 0, server.logs()


def test_a_tampered_artefact_keeps_the_server_unready_then_exits_3(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    seed_demo(registry)
    manifest = registry.resolve("cnn-digits", "production")
    artefact = tmp_path / "registry" / "cnn-digits" / manifest.version / manifest.artefact
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))

    server = start_server(tmp_path, env={"FRAMEWORM_LOAD_RETRIES": "2"})
    try:
        polls = poll(server, time.monotonic() + 30, stop_when_ready=False)
        code = server.process.wait(15)
    finally:
        server.terminate()
    assert polls.healthz and set(polls.healthz) == {200}, (code, server.logs())
    assert set(polls.readyz) == {503}
    checks = polls.last_readyz_verbose["checks"]
    assert isinstance(checks, dict)
    # Public, the reason names the failure's type; the log says what it was.
    assert "IntegrityError" in checks["model"]["reason"]
    assert "sha256" not in checks["model"]["reason"]
    assert "sha256" in server.logs()
    assert code == 3


def test_a_sigterm_before_the_model_was_ever_ready_skips_the_drain_delay(tmp_path: Path) -> None:
    """Never ready, the pod was in no endpoint list: there is no traffic to wait out. The load
    (here retrying a tampered artefact, with backoff, for about 15 s) is abandoned."""
    registry = ModelRegistry(tmp_path / "registry")
    seed_demo(registry)
    manifest = registry.resolve("cnn-digits", "production")
    artefact = tmp_path / "registry" / "cnn-digits" / manifest.version / manifest.artefact
    artefact.write_bytes(artefact.read_bytes()[:-1])

    server = start_server(
        tmp_path, env={"FRAMEWORM_LOAD_RETRIES": "5", "FRAMEWORM_DRAIN_DELAY_S": "10"}
    )
    try:
        server.wait_live()
        assert httpx.get(f"{server.url}/readyz").status_code == 503, server.logs()
        started = time.monotonic()
        code = server.terminate(timeout_s=8)
        took = time.monotonic() - started
    finally:
        server.terminate()
    assert code == 0, server.logs()
    assert took < 5, server.logs()  # not the 10 s drain delay
    assert "the listener closes in 0.0s" in server.logs()


def test_a_taken_port_is_one_error_line_and_exit_1_not_the_model_s_exit_3(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(tmp_path, env={"FRAMEWORM_PORT": str(port)})
        try:
            code = server.process.wait(60)
        finally:
            server.terminate()
    logs = server.logs()
    assert code == 1, logs
    assert f"cannot listen on 127.0.0.1:{port}" in logs
    assert "model ready" not in logs  # nothing started before the port was known to be free


def test_as_pid_1_a_sigterm_during_start_up_exits(tmp_path: Path) -> None:
    """A container without an init runs `frameworm` as PID 1, whose signals without a handler
    the kernel ignores: a SIGTERM in the seconds of imports was lost and the pod ran on."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        skip_unless_ci("a PID namespace needs unshare and root (CI runs as root)")
    process = subprocess.Popen(
        [unshare, "--pid", "--fork", "--mount-proc", FRAMEWORM, "serve"],
        env=server_env(tmp_path / "registry", free_port()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    init: int | None = None
    try:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split():
            assert time.monotonic() < deadline, "unshare never started frameworm"
            time.sleep(0.01)
        init = int(children.read_text().split()[0])  # PID 1 inside its namespace
        # Until a handler is in, the kernel drops a SIGTERM to PID 1, and nothing can change
        # that for the interpreter's own start-up (over 0.5 s on a busy machine, coverage's
        # included): sent again until it exits, which must be long before the imports end.
        deadline = time.monotonic() + 15
        while process.poll() is None:
            assert time.monotonic() < deadline, "frameworm as PID 1 ran on after SIGTERMs"
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGTERM)
            time.sleep(0.2)
        code = process.returncode
    finally:
        if process.poll() is None:
            if init is not None:  # SIGKILL reaches a namespace's init; unshare would leave it
                os.kill(init, signal.SIGKILL)
            process.kill()
            process.wait()
    assert code == 128 + signal.SIGTERM
