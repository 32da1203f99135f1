"""ModelRunner: one loaded model version, its forward passes on one dedicated thread."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from models.formats import LoadedModel
from models.manifest import ModelManifest
from models.tensors import example_inputs


def pick_device(setting: str) -> torch.device:
    """`auto`: the first CUDA device when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"FRAMEWORM_DEVICE={setting} but CUDA is not available")
    return device


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch_size: the sizes batches will mostly take."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


class ModelRunner:
    """Runs forward passes off the event loop, one at a time, under inference mode.

    One thread per runner: torch already parallelises inside an operator, and a single
    consumer keeps batches in order and the device free of contention.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.batch_seconds = 0.0  # from the warm-up; 0 when there was none
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frameworm-forward")

    @property
    def manifest(self) -> ModelManifest:
        return self.model.manifest

    async def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.forward, arrays)

    def forward(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        outputs = self.model.forward([torch.from_numpy(a) for a in arrays])
        # numpy has no bfloat16; everything else keeps its dtype.
        return [
            (o.float() if o.dtype == torch.bfloat16 else o).detach().to("cpu").numpy()
            for o in outputs
        ]

    def warm_up(self, batch_sizes: list[int], rounds: int = 2) -> float:
        """Run each batch size a few times (allocators, kernels, caches).

        Returns, and keeps as `batch_seconds`, the time of the largest batch: the estimate
        admission control starts from before live batches have been timed.
        """
        for size in batch_sizes:
            inputs = [t.numpy() for t in example_inputs(self.manifest.signature, size)]
            for _ in range(rounds):
                start = time.perf_counter()
                self.forward(inputs)
                self.batch_seconds = time.perf_counter() - start
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        return self.batch_seconds

    def close(self) -> None:
        """Release after the last batch: the executor finishes what it has, then the weights go."""
        self._executor.shutdown(wait=True)
        self.model.release()
