"""In-process apps with their lifespan running, reached through httpx's ASGI transport.

Starlette's TestClient warns that its httpx support is deprecated, so this runs the app the way a
server does instead: the lifespan in an event loop on a portal thread, its state copied into
every request's scope, and requests sent from the test's thread through that loop.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.config import Settings
from app.main import create_app

READY_TIMEOUT_S = 30.0
T = TypeVar("T")


def app_settings(registry: Path, **overrides: Any) -> Settings:
    """Explicit settings for tests that are not about auth: auth off, small batches, no drain."""
    values: dict[str, Any] = {
        "env": "development",
        "registry": str(registry),
        "auth_enabled": False,
        "seed_demo": False,
        "max_batch_size": 8,
        "drain_delay_s": 0,
        "enable_docs": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


class _WithLifespanState:
    """What a server does with lifespan state: a shallow copy in each request's scope."""

    def __init__(self, app: FastAPI, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = dict(self.state)
        await self.app(scope, receive, send)


class AppClient:
    """A synchronous client for an app whose lifespan runs on a portal's event loop."""

    def __init__(self, app: FastAPI, portal: BlockingPortal, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state  # the lifespan's resources (host, batcher, ...)
        self._portal = portal
        transport = httpx.ASGITransport(
            app=_WithLifespanState(app, state), raise_app_exceptions=False
        )
        self._client = httpx.AsyncClient(transport=transport, base_url="http://testserver")

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        call = functools.partial(self._client.request, method, url, **options)
        return self._portal.call(call)

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)

    def run(self, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        """`scenario(client)` on the app's event loop: for requests that must overlap."""
        return self._portal.call(scenario, self._client)

    def close(self) -> None:
        self._portal.call(self._client.aclose)


def sample(client: AppClient, series: str) -> float:
    """A series' value on /metrics (`name{label="value"}` as exposed), 0 before it exists."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def wait_ready(client: AppClient, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"not ready within {timeout_s}s: {client.get('/readyz?verbose').text}")


@contextmanager
def running_app(settings: Settings, *, ready: bool = True) -> Iterator[AppClient]:
    """The app with its lifespan running (the model loads in the background)."""
    app = create_app(settings)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)) as state,
    ):
        client = AppClient(app, portal, dict(state or {}))
        try:
            if ready:
                wait_ready(client)
            yield client
        finally:
            client.close()
