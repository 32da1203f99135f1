"""The model runner: picking the device, CUDA math, warm-up sizes, closing; the heap freeze."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from app.inference.host import freeze_startup_heap
from app.inference.runner import ModelRunner, pick_device, set_cuda_math, warmup_batch_sizes
from models.registry import ModelRegistry
from tests.support.models import register_mlp


@pytest.fixture
def restore_cuda_math() -> Iterator[None]:
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_auto_picks_cuda_only_when_there_is_one() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_a_device_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="FRAMEWORM_DEVICE=cuda:1 but CUDA is not available"):
        pick_device("cuda:1")


@pytest.mark.usefixtures("restore_cuda_math")
def test_tf32_follows_the_one_setting_for_convolutions_and_matmuls() -> None:
    # cuDNN's own default is TF32 on: the strict setting must switch it off.
    torch.backends.cudnn.allow_tf32 = True
    set_cuda_math(allow_tf32=False)
    assert not torch.backends.cudnn.allow_tf32
    assert not torch.backends.cuda.matmul.allow_tf32
    set_cuda_math(allow_tf32=True)
    assert torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize(
    ("max_batch", "sizes"),
    [(1, [1]), (2, [1, 2]), (32, [1, 2, 4, 8, 16, 32]), (48, [1, 2, 4, 8, 16, 32, 48])],
)
def test_warm_up_covers_powers_of_two_and_the_maximum(max_batch: int, sizes: list[int]) -> None:
    assert warmup_batch_sizes(max_batch) == sizes


def test_a_closed_runner_leaves_no_thread_behind_and_refuses_further_batches(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    manifest = register_mlp(registry, "1.0.0", tmp_path, seed=0)
    runner = ModelRunner(registry.load(manifest, "cpu"))
    x = np.zeros((2, 4), dtype=np.float32)

    (y,) = asyncio.run(runner.run([x]))
    runner.close()

    assert y.shape == (2, 3)
    # The forward thread refers back to the runner: dropping it leaves no cycle for the
    # garbage collector (startup's heap is frozen, see app.inference.host.freeze_startup_heap).
    assert runner._thread is None
    with pytest.raises(RuntimeError, match="was released"):
        asyncio.run(runner.run([x]))
    runner.close()


def test_freezing_the_startup_heap_keeps_it_out_of_full_collections() -> None:
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 1000  # torch, FastAPI and the rest of what is imported
    finally:
        gc.unfreeze()
