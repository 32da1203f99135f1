"""A server on a .pt2 exported with a capped batch dimension: it warms up and serves batches
past the cap (before, the warm-up at 4 failed `x.size()[0] <= 3` and every replica exited)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app.config import Settings
from app.inference.batcher import DynamicBatcher
from app.inference.host import ModelHost
from app.inference.observer import NoObserver
from app.inference.runner import ModelRunner
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_SIGNATURE
from tests.support.capped_batch import write_capped_mlp


class BatchSizes(NoObserver):
    """Records the size of each batch the batcher runs."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch_done(self, runner: ModelRunner, items: int, *args: object, **kwargs: object) -> None:
        self.sizes.append(items)


@pytest.fixture
def capped(tmp_path: Path) -> tuple[ModelRunner, torch.nn.Module]:
    """Registered, promoted and loaded as a server does, warm-up ladder 1, 2, 4, ... 32."""
    module = write_capped_mlp(tmp_path / "capped.pt2", max_batch=3)
    registry = ModelRegistry(tmp_path / "registry")
    registry.register(
        "capped", "1.0.0", tmp_path / "capped.pt2", format="torch_export", signature=TINY_SIGNATURE
    )
    registry.promote("capped", "1.0.0", "production")
    settings = Settings(
        _env_file=None,
        registry=str(tmp_path / "registry"),
        model="capped",
        seed_demo=False,
        max_batch_size=32,
        warmup=True,
        retain_freed_memory=False,
    )
    return ModelHost(settings, registry).prepare(), module


def test_a_server_batches_past_the_exported_cap_and_answers_each_request(
    capped: tuple[ModelRunner, torch.nn.Module],
) -> None:
    runner, module = capped
    assert runner.model.max_batch == 3
    requests = [np.random.default_rng(n).standard_normal((n, 4), np.float32) for n in (2, 3, 10)]

    observer = BatchSizes()

    async def main() -> list[np.ndarray]:
        batcher = DynamicBatcher(
            lambda: runner,
            max_batch_size=32,
            max_delay_s=0.0,
            max_queue_items=64,
            observer=observer,
        )
        deadline = time.monotonic() + 10
        # Queued before the batcher starts: they go to the model as one batch of 15 items.
        submitted = [batcher.submit([x], len(x), deadline) for x in requests]
        tasks = [asyncio.ensure_future(s) for s in submitted]
        await asyncio.sleep(0)
        batcher.start()
        served = await asyncio.gather(*tasks)
        await batcher.close(5)
        return [s.outputs[0] for s in served]

    try:
        answers = asyncio.run(main())
    finally:
        runner.close()
    assert observer.sizes == [15]
    for x, y in zip(requests, answers, strict=True):
        with torch.inference_mode():
            np.testing.assert_allclose(y, module(torch.from_numpy(x)).numpy(), atol=1e-6)
