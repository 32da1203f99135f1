"""What the batcher's tests share: a fake runner and a batcher made around it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from app.errors import Problem
from app.inference.batcher import DynamicBatcher
from app.inference.runner import ModelRunner

T = TypeVar("T")


@dataclass
class FakeManifest:
    name: str = "fake"
    version: str = "9.9.9"


@dataclass
class FakeRunner:
    """Doubles every value; records each batch; can be held on a gate or made to fail."""

    manifest: FakeManifest = field(default_factory=FakeManifest)
    batches: list[list[np.ndarray]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0
    poison: float = math.inf  # a value at or past it fails the batch holding it
    delay_s: float = 0.0  # of each forward pass
    batch_seconds: float = 0.0  # as if there had been no warm-up

    async def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(arrays)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay_s)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the model broke")
        if any((a >= self.poison).any() for a in arrays):
            raise RuntimeError("an input the model asserts against")
        return [a * 2 for a in arrays]

    @property
    def batch_sizes(self) -> list[int]:
        return [len(b[0]) for b in self.batches]


def make_batcher(runner: FakeRunner | None, **options: Any) -> DynamicBatcher:
    settings: dict[str, Any] = {"max_batch_size": 4, "max_delay_s": 0.0, "max_queue_items": 64}
    settings.update(options)
    batcher = DynamicBatcher(lambda: cast(ModelRunner | None, runner), **settings)
    batcher.start()
    return batcher


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), 10)

    return asyncio.run(bounded())


def items(*values: float) -> list[np.ndarray]:
    return [np.array([[v] for v in values], dtype=np.float32)]


def later(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def is_problem(code: str) -> Callable[[BaseException], bool]:
    return lambda e: isinstance(e, Problem) and e.code == code


@contextlib.asynccontextmanager
async def holding(
    batcher: DynamicBatcher, runner: FakeRunner, count: int = 1
) -> AsyncIterator[None]:
    """A pass of `count` items held on the runner's gate for the block; then released and
    answered, and the batcher closed."""
    assert runner.gate is not None
    held = asyncio.create_task(batcher.submit([np.zeros((count, 1), np.float32)], count, later()))
    await runner.started.wait()
    try:
        yield
    finally:
        runner.gate.set()
    await held
    await batcher.close(1)
