"""A throwaway redis-server for tests: free port, temp dir, stopped by pid.

Use the `redis_server` fixture (re-export it from a conftest with
`from tests.support.redis import redis_server as redis_server`) or `run_redis_server()`.
Skips when redis-server is missing, and fails instead under CI=true.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support import free_port, require_executable

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisServer:
    port: int
    pid: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _wait_until_ready(process: subprocess.Popen[bytes], port: int) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + START_TIMEOUT_S
    delay = 0.01
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited early with {process.returncode}")
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S}s")
            # Polling an external process's port: it offers no readiness event to wait on.
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    finally:
        client.close()


@contextmanager
def run_redis_server(directory: Path, port: int | None = None) -> Iterator[RedisServer]:
    """Start redis-server on 127.0.0.1 (a free port, or `port` to restart one stopped) with
    `directory` as its working dir."""
    executable = require_executable("redis-server")
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        executable,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_ready(process, port)
        yield RedisServer(port=port, pid=process.pid, directory=directory)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server per test."""
    with run_redis_server(tmp_path / "redis") as server:
        yield server


@contextmanager
def hung(server: RedisServer) -> Iterator[None]:
    """Redis stopped, not gone: it keeps its connections and answers nothing."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)
