"""The C allocator's settings: a forward thread reuses its freed batch memory."""

from __future__ import annotations

import platform
import resource
import threading

import pytest
import torch

from app.inference.allocator import retain_freed_memory
from tests.load.models import build, digit_input


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_forward_thread_reuses_freed_batch_memory_without_page_faults() -> None:
    # The benchmark CNN at batch 32 on a thread of its own, as the runner runs it: each batch
    # allocates about 12 MB of activations and frees them.
    assert retain_freed_memory()
    model, x = build("cnn"), torch.from_numpy(digit_input()).repeat(32, 1)
    faults: list[int] = []

    def batches() -> None:
        with torch.inference_mode():
            for _ in range(3):  # the arena grows to the batches' high-water mark
                model(x)
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            for _ in range(5):
                model(x)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    thread = threading.Thread(target=batches)
    thread.start()
    thread.join()
    # With glibc's defaults the same batches take about 2,300 page faults each.
    assert faults[0] < 50
