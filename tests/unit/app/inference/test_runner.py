"""The model runner: picking the device, CUDA math, warm-up sizes, closing; the heap freeze."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from app.inference.host import freeze_startup_heap
from app.inference.runner import (
    ModelRunner,
    cgroup_cpu_quota,
    cpu_threads,
    pick_device,
    set_cuda_math,
    warmup_batch_sizes,
)
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


def test_closing_does_not_wait_for_ever_on_a_hung_forward_pass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    manifest = register_mlp(registry, "1.0.0", tmp_path, seed=0)
    runner = ModelRunner(registry.load(manifest, "cpu"))
    stuck, unstick = threading.Event(), threading.Event()
    forward = runner.model.forward

    def hung_forward(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        stuck.set()
        unstick.wait()
        return forward(inputs)

    runner.model.forward = hung_forward  # type: ignore[method-assign,assignment]
    loop = asyncio.new_event_loop()
    try:
        job = loop.create_task(runner.run([np.zeros((1, 4), dtype=np.float32)]))
        loop.run_until_complete(asyncio.sleep(0))  # the job reaches the forward thread
        assert stuck.wait(5)
        started = time.monotonic()
        runner.close(timeout_s=0.2)
        assert time.monotonic() - started < 2
        assert "a forward pass is still running" in caplog.text
        assert runner.model._module is not None  # not freed under the running pass
        unstick.set()  # the pass ends; its batch is answered, then the thread releases, stops
        (y,) = loop.run_until_complete(job)
        assert y.shape == (1, 3)
        runner._thread.join(5)  # type: ignore[union-attr]
        assert not runner._thread.is_alive()  # type: ignore[union-attr]
        assert runner.model._module is None
    finally:
        unstick.set()
        loop.close()


def test_freezing_the_startup_heap_keeps_it_out_of_full_collections() -> None:
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 1000  # torch, FastAPI and the rest of what is imported
    finally:
        gc.unfreeze()


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="ascii")
    return root


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),  # cgroup v2: a 2-CPU limit
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),  # no cgroup files at all
    ],
)
def test_the_cgroup_cpu_quota_is_read_from_v2_or_v1(
    tmp_path: Path, files: dict[str, str], quota: float | None
) -> None:
    assert cgroup_cpu_quota(cgroup(tmp_path, files)) == quota


def test_torch_threads_follow_the_quota_rounded_up_and_shared_among_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))  # a big node
    limited = cgroup(tmp_path / "limited", {"cpu.max": "150000 100000"})
    assert cpu_threads(1, limited) == 2
    assert cpu_threads(2, limited) == 1
    assert cpu_threads(4, limited) == 1  # never zero
    unlimited = cgroup(tmp_path / "unlimited", {"cpu.max": "max 100000"})
    assert cpu_threads(1, unlimited) == 32
    assert cpu_threads(4, unlimited) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_threads(1, limited) == 1  # pinned to one core: the quota does not add any
