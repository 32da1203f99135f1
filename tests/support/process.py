"""Driving real `frameworm serve` processes: launch with options, load them, signal them.

`launch` builds on `tests.support.server` (same environment, same `ServerProcess`) and adds
command-line options and a process group of its own, so that a supervisor's workers can be
reaped too if a test fails. `Load` runs concurrent HTTP clients on one event loop and records
every request: when it was sent, when it ended, and what came back (or which transport error).
Every wait here is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import free_port
from tests.support.server import FRAMEWORM, ServerProcess, server_env

READY_TIMEOUT_S = 90.0  # generous: a loaded 2-core machine imports torch slowly
EXIT_TIMEOUT_S = 30.0
_TLS = ssl.create_default_context()  # unused over http://, but built once, not per client
_ONE_CONNECTION = httpx.Limits(max_connections=1, max_keepalive_connections=1)
INFER_BODY: dict[str, Any] = {"inputs": {"x": [[0.5, -0.25, 1.0, 0.0]]}}
# Settings every launched server gets unless a test overrides them.
BASE_ENV = {
    "FRAMEWORM_MODEL": "tiny",
    "FRAMEWORM_RATE_LIMIT": "1000000/minute",
    "FRAMEWORM_LOG_LEVEL": "info",
}


def launch(
    directory: Path,
    registry: Path,
    env: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
) -> ServerProcess:
    """Start `frameworm serve OPTIONS` on a free port in its own process group (not yet ready)."""
    port = free_port()
    log_path = directory / f"frameworm-{port}.log"
    settings = {
        **BASE_ENV,
        "FRAMEWORM_API_KEYS_FILE": str(directory / "api-keys.json"),
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [FRAMEWORM, "serve", *options],
            env=server_env(registry, port, settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(process, port, log_path)


@contextlib.contextmanager
def running(
    directory: Path,
    registry: Path,
    env: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """A ready server for the block; afterwards SIGTERM, then SIGKILL to its group if it lingers."""
    server = launch(directory, registry, env, options)
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield server
    finally:
        stop(server)


def stop(server: ServerProcess, timeout_s: float = EXIT_TIMEOUT_S) -> int:
    """SIGTERM by pid; past the bound, SIGKILL the process group it leads (workers included)."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the group exists while any member lives
    return process.wait(timeout_s)


async def wait_exit(server: ServerProcess, timeout_s: float = EXIT_TIMEOUT_S) -> int:
    """The exit code, awaited off the event loop; TimeoutError when it has not exited in time."""
    return await asyncio.wait_for(asyncio.to_thread(server.process.wait), timeout_s)


async def readiness(client: httpx.AsyncClient) -> dict[str, Any]:
    """/readyz?verbose: its status code and checks, as one dict."""
    response = await client.get("/readyz?verbose")
    body: dict[str, Any] = response.json()
    return {"status_code": response.status_code, **body}


async def readiness_until(
    client: httpx.AsyncClient,
    what: Callable[[dict[str, Any]], bool],
    timeout_s: float = EXIT_TIMEOUT_S,
) -> dict[str, Any]:
    """Poll /readyz?verbose until `what` holds for it; that answer."""
    deadline = time.monotonic() + timeout_s
    while not what(answer := await readiness(client)):
        assert time.monotonic() < deadline, f"/readyz?verbose never got there: {answer}"
        await asyncio.sleep(0.1)
    return answer


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """The sum of one metric's samples whose labels include `labels` (0 when absent)."""
    text = (await client.get("/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{key}="{want}"' in series for key, want in labels.items()):
            total += float(value)
    return total


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent and ended (monotonic), and its answer or transport error."""

    client: int
    sent: float
    ended: float
    status: int | None
    version: str | None = None
    content_type: str = ""
    code: str | None = None  # the problem's code, for an error
    retry_after: str | None = None
    error: str | None = None  # the transport error's type, when there was no answer

    @property
    def seconds(self) -> float:
        return self.ended - self.sent


@dataclass
class Load:
    """`clients` concurrent loops posting to /infer until `stop_sending()` (or `stop_at`)."""

    url: str
    clients: int
    body: dict[str, Any] = field(default_factory=lambda: dict(INFER_BODY))
    timeout_s: float = 30.0
    pause_s: float = 0.0
    stop_at: float = float("inf")  # monotonic time after which no client sends a new request
    outcomes: list[Outcome] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.clients)]

    def stop_sending(self) -> None:
        self.stop_at = min(self.stop_at, time.monotonic())

    async def finish(self, timeout_s: float = EXIT_TIMEOUT_S) -> list[Outcome]:
        """Stop sending, wait (bounded) for every request in flight; the outcomes so far."""
        self.stop_sending()
        done, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)
        for task in done:
            task.result()  # a bug in the loop itself must fail the test
        assert not pending, f"{len(pending)} client(s) still waiting after {timeout_s}s"
        return self.outcomes

    async def until(self, count: int, timeout_s: float = EXIT_TIMEOUT_S) -> None:
        """Wait until at least `count` requests have ended."""
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < count:
            assert time.monotonic() < deadline, f"only {len(self.outcomes)} of {count} requests"
            await asyncio.sleep(0.02)

    async def until_seen(
        self, what: Callable[[Outcome], bool], timeout_s: float = EXIT_TIMEOUT_S
    ) -> Outcome:
        """Wait until a request ends that matches `what`; that request."""
        deadline, seen = time.monotonic() + timeout_s, 0
        while True:
            for outcome in self.outcomes[seen:]:
                if what(outcome):
                    return outcome
            seen = len(self.outcomes)
            assert time.monotonic() < deadline, f"not seen in {timeout_s}s: {self.statuses()}"
            await asyncio.sleep(0.02)

    def statuses(self) -> Counter[int | str | None]:
        return Counter(o.status if o.status is not None else o.error for o in self.outcomes)

    async def _loop(self, index: int) -> None:
        # A client of its own (one kept-alive connection), as separate callers would have: a
        # pool shared by many concurrent requests can leave some waiting on it for seconds.
        async with httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, verify=_TLS, limits=_ONE_CONNECTION
        ) as client:
            while time.monotonic() < self.stop_at:
                self.outcomes.append(await post(client, index, self.body))
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)


async def post(client: httpx.AsyncClient, index: int, body: dict[str, Any]) -> Outcome:
    """POST /infer once and record what happened."""
    sent = time.monotonic()
    try:
        response = await client.post("/infer", json=body)
    except httpx.TransportError as exc:
        return Outcome(index, sent, time.monotonic(), None, error=type(exc).__name__)
    ended = time.monotonic()
    json_body = "json" in response.headers.get("content-type", "")
    payload: dict[str, Any] = response.json() if json_body else {}
    return Outcome(
        index,
        sent,
        ended,
        response.status_code,
        version=payload.get("version"),
        content_type=response.headers.get("content-type", ""),
        code=payload.get("code"),
        retry_after=response.headers.get("retry-after"),
    )
