"""A real `frameworm serve` process for end-to-end tests: free port, temp registry, stopped by pid.

`start_server(...)` returns a running `ServerProcess` (not yet ready); `serve(...)` is a context
manager that waits for /readyz and stops the process on exit. The environment is passed through
(coverage's subprocess patch relies on it); the server's own settings are added on top, with
auth off and no drain delay unless the caller says otherwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import free_port

# As tests/support/process.py: loading and warming the model on a loaded 2-core machine took
# over 30 s once (a rehearsal of CI with other servers under load beside it).
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
FRAMEWORM = str(Path(sys.executable).with_name("frameworm"))


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll /readyz until 200; fail with the server's log when it exits or times out."""
        self._wait_for("/readyz", timeout_s)

    def wait_live(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll /healthz until 200: listening, the model perhaps still loading."""
        self._wait_for("/healthz", timeout_s)

    def _wait_for(self, probe: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with {self.process.returncode}:\n{self.logs()}"
                    )
                try:
                    if client.get(probe).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"{probe} was not 200 within {timeout_s}s:\n{self.logs()}")

    def terminate(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM by pid, then SIGKILL after the bound; returns the exit code."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return self.process.wait(timeout_s)


def server_env(
    registry: Path, port: int, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ)  # passed through: coverage's subprocess patch needs it
    env.update(
        {
            "FRAMEWORM_REGISTRY": str(registry),
            "FRAMEWORM_HOST": "127.0.0.1",
            "FRAMEWORM_PORT": str(port),
            "FRAMEWORM_AUTH_ENABLED": "false",
            "FRAMEWORM_DRAIN_DELAY_S": "0",
            "FRAMEWORM_ENV": "development",
            "FRAMEWORM_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides or {})
    return env


def start_server(
    directory: Path, *, registry: Path | None = None, env: Mapping[str, str] | None = None
) -> ServerProcess:
    """Start `frameworm serve` on a free port; its log goes to a file in `directory`."""
    port = free_port()
    registry = registry or directory / "registry"
    log_path = directory / f"frameworm-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [FRAMEWORM, "serve"],
            env=server_env(registry, port, env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServerProcess(process, port, log_path)


@contextmanager
def serve(
    directory: Path, *, registry: Path | None = None, env: Mapping[str, str] | None = None
) -> Iterator[ServerProcess]:
    """A ready server for the duration of the block; stopped (SIGTERM, then SIGKILL) after it."""
    server = start_server(directory, registry=registry, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()
