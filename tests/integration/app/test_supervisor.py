"""The supervisor of `--workers N` and a signal that comes while it starts the workers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.context import SpawnProcess
from multiprocessing.process import BaseProcess
from typing import Any, ClassVar

import pytest

from app import workers as workers_module
from app.config import Settings

WORKERS = 3


def serve_until_told() -> None:
    """A worker stand-in: serves until signalled (SIGTERM's default action ends it)."""
    time.sleep(40)


class StartedThenSignalled(SpawnProcess):
    """A worker stand-in; SIGTERM reaches the supervisor just after the first one has started,
    while it goes on to start the others."""

    started: ClassVar[list[BaseProcess]] = []

    def start(self) -> None:
        super().start()
        if not self.started:
            os.kill(os.getpid(), signal.SIGTERM)
        self.started.append(self)


class SignalledWhileStarting:
    """The spawn context the supervisor asks for, making StartedThenSignalled workers."""

    @staticmethod
    def Process(**options: Any) -> BaseProcess:
        return StartedThenSignalled(target=serve_until_told, name=options["name"])


def test_a_signal_while_the_workers_start_stops_every_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers started after the signal were never told: they served on, and a second
    SIGTERM reached them as SIGINT, which a worker ignores before its drain. Only SIGKILL
    stopped the pod."""
    StartedThenSignalled.started.clear()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(multiprocessing, "get_context", lambda method: SignalledWhileStarting)
    settings = Settings(_env_file=None, env="development", workers=WORKERS)
    began = time.monotonic()
    try:
        with socket.socket() as sock:
            code = workers_module.supervise(settings, sock, serve_one=lambda *a, **k: 0)
    finally:
        for process in StartedThenSignalled.started:
            if process.is_alive():
                process.kill()
                process.join(5)
    assert time.monotonic() - began < 30, "a worker served on after the signal"
    assert code == 0
    assert StartedThenSignalled.started and not any(
        p.is_alive() for p in StartedThenSignalled.started
    )
    assert all(p.exitcode == -signal.SIGTERM for p in StartedThenSignalled.started)
    # Its metrics directory is gone, and so is the variable naming it: later apps in this
    # process failed every /metrics.
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
