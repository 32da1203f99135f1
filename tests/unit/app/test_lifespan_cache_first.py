"""The result cache is built before anything starts, so that a cache that cannot be built
stops startup with nothing to abandon (a model load running on its thread made the process
abort, exit 134, as the interpreter exited)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from fastapi import FastAPI

import app.lifespan as lifespan_module
from app.config import Settings
from app.lifespan import Lifecycle, lifespan
from app.production import GracefulShutdown


def test_a_cache_that_cannot_be_built_stops_startup_before_the_model_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []

    def load(*args: Any) -> Coroutine[Any, Any, None]:
        started.append("model load")
        return asyncio.sleep(0)

    def no_cache(*args: Any) -> None:
        raise ValueError("no cache")

    monkeypatch.setattr(lifespan_module, "_load", load)
    monkeypatch.setattr(lifespan_module, "build_cache", no_cache)
    app = FastAPI()
    app.state.settings = Settings(_env_file=None, metrics_enabled=False)
    app.state.lifecycle = Lifecycle(GracefulShutdown(timeout=1.0))
    app.state.metrics = app.state.tracer = None

    async def start() -> None:
        async with lifespan(app):
            raise AssertionError("the app started")

    with pytest.raises(ValueError, match="no cache"):
        asyncio.run(start())
    assert started == []
