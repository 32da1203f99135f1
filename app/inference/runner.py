"""ModelRunner: one loaded model version, its forward passes on one dedicated thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
import torch

from app.inference.allocator import give_back_freed_memory
from models.formats import LoadedModel
from models.manifest import ModelManifest, Signature
from models.tensors import NUMPY_DTYPES, TORCH_DTYPES

log = logging.getLogger("frameworm.model")

# How long closing a version waits for its last forward pass: as long as each shutdown hook
# (app.lifespan), so the termination grace period the chart derives covers it.
RELEASE_WAIT_S = 5.0
FORWARD_THREAD = "frameworm-forward"


def pick_device(setting: str) -> torch.device:
    """`auto`: the first CUDA device when there is one, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"FRAMEWORM_DEVICE={setting} but CUDA is not available")
    return device


def set_cuda_math(allow_tf32: bool) -> None:
    """On CUDA, float32 means float32 unless the operator allows TF32.

    cuDNN runs float32 convolutions in TF32 by default on Ampere and newer: about 10 bits of
    mantissa, enough to move a CNN's outputs past a golden check's 1e-4 and so keep the server
    unready. Matmuls already default to full float32; both follow the one setting. These are
    process-wide flags, set before the model loads.
    """
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def cpu_threads(workers: int = 1, cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Intra-op threads for torch when the operator sets none: the CPUs this process may run
    on, capped by its cgroup's CPU quota, shared among the workers.

    torch's default counts the cores the process may be scheduled on. In a Kubernetes pod with
    a CPU limit (and no static CPU manager) that is every core of the node, and 32 threads
    under a 2-CPU quota spend most of each period throttled.
    """
    available = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup)
    if quota is not None:
        available = min(available, math.ceil(quota))
    return max(1, available // workers)


def cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of time per period the cgroup allows (v2 `cpu.max`, else v1); None: no limit."""
    try:
        quota, period = (root / "cpu.max").read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


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
        self._input_dtypes = [TORCH_DTYPES[spec.dtype] for spec in model.signature.inputs]
        self.batch_seconds = 0.0  # from the warm-up; 0 when there was none
        # The forward thread takes (inputs, loop, future) jobs; None tells it to stop. A plain
        # queue and one call_soon_threadsafe per batch: run_in_executor's concurrent future,
        # its chaining to an asyncio future and their locks cost about 0.1 ms a batch here.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def manifest(self) -> ModelManifest:
        return self.model.manifest

    async def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass on the forward thread; the loop stays free meanwhile."""
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._jobs.put((arrays, loop, future))
        return await future

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve_jobs, name=FORWARD_THREAD, daemon=True
                    )
                    self._thread.start()

    def _serve_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            arrays, loop, future = job
            try:
                outcome: list[np.ndarray] | BaseException = self.forward(arrays)
            except BaseException as exc:  # the batch's requests get it, the thread goes on
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, future, outcome)
        # Closed: the last pass is done, so the weights can go, however long it took.
        self.model.release()
        give_back_freed_memory()

    def forward(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        # Arrays come in their wire dtypes; bfloat16 travels as float32 (numpy has no bfloat16)
        # and becomes bfloat16 here. Every other dtype is already the model's.
        tensors = [
            tensor if tensor.dtype == dtype else tensor.to(dtype)
            for tensor, dtype in zip(
                (torch.from_numpy(a) for a in arrays), self._input_dtypes, strict=True
            )
        ]
        outputs = self.model.forward(tensors)
        # numpy has no bfloat16; everything else keeps its dtype. Row-major, whatever layout the
        # model computed in (a channels-last convolution answers NHWC strides): encoders and
        # the result cache take C order.
        return [
            (o.float() if o.dtype == torch.bfloat16 else o).detach().to("cpu").contiguous().numpy()
            for o in outputs
        ]

    def warm_up(self, batch_sizes: list[int], rounds: int = 2) -> float:
        """Run each batch size a few times (allocators, kernels, caches).

        Returns, and keeps as `batch_seconds`, the time of the largest batch: the estimate
        admission control starts from before live batches have been timed.
        """
        for size in batch_sizes:
            inputs = wire_examples(self.manifest.signature, size)
            for _ in range(rounds):
                start = time.perf_counter()
                self.forward(inputs)
                self.batch_seconds = time.perf_counter() - start
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        return self.batch_seconds

    def close(self, timeout_s: float = RELEASE_WAIT_S) -> None:
        """Release after the last batch: the thread finishes what it has, then the weights go.

        The forward thread releases them itself once its last pass ends, however long that
        takes; this waits for it at most `timeout_s`, so that a hung pass (a stuck kernel, a
        model in a loop) cannot hold a shutdown: the thread is a daemon and ends with the
        process.
        """
        thread = self._thread
        if thread is None:
            self.model.release()
            give_back_freed_memory()
            return
        self._jobs.put(None)  # after the jobs already queued
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning(
                "%s %s: a forward pass is still running after %g s; its weights go when it ends",
                self.manifest.name,
                self.manifest.version,
                timeout_s,
            )
            return
        self._thread = None  # the thread refers back to this runner: no cycle left behind


def wire_examples(signature: Signature, batch_size: int) -> list[np.ndarray]:
    """Zero inputs as requests deliver them: each in its wire dtype (bfloat16 as float32)."""
    return [
        np.zeros((batch_size, *spec.shape[1:]), dtype=NUMPY_DTYPES[spec.dtype])
        for spec in signature.inputs
    ]


_Job = tuple[list[np.ndarray], asyncio.AbstractEventLoop, "asyncio.Future[list[np.ndarray]]"]


def _settle(
    future: asyncio.Future[list[np.ndarray]], outcome: list[np.ndarray] | BaseException
) -> None:
    if future.done():  # the batch was given up (shutdown)
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
