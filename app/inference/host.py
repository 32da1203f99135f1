"""ModelHost: which model version this server serves, and getting it ready.

Startup, in a background task so the server listens (and /healthz answers) meanwhile:
resolve the name at the stage (or the pinned version) -> verify the artefact's sha256 ->
load onto the device -> warm up at the batch sizes batches will take -> run the golden checks
-> ready. A failure is retried a bounded number of times with backoff; then the host reports
it failed and the server exits non-zero, so Kubernetes shows the reason.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass
from typing import Literal

import torch

from app.config import Settings
from app.inference.allocator import retain_freed_memory
from app.inference.daemon_thread import on_daemon_thread
from app.inference.runner import (
    FORWARD_THREAD,
    ModelRunner,
    cpu_threads,
    pick_device,
    set_cuda_math,
    warmup_batch_sizes,
)
from models.errors import ArtefactError, RegistryError
from models.golden import run_golden_checks
from models.manifest import ModelManifest
from models.registry import ModelRegistry

# Failures a load reports in one line (registry, store, artefact, golden check, device).
EXPECTED_LOAD_ERRORS = (RegistryError, OSError, ValueError, RuntimeError)


def kind_of(exc: BaseException) -> str:
    """What `/readyz?verbose` (public) says of a failure: the exception's type only. Its text
    may hold paths, digests, endpoints or whatever a model's code put there: that goes to the
    log, for operators."""
    return f"{type(exc).__name__} (details in the server log)"


log = logging.getLogger("frameworm.model")
# The thread a version loads on: a drain abandons it, and the process must not wait for it.
LOAD_THREAD = "frameworm-model-load"
# Threads that may still be inside torch when the process ends (a load the drain abandoned, a
# forward pass that outlasted the release's wait): exiting must not finalize under them.
TORCH_THREADS = frozenset({LOAD_THREAD, FORWARD_THREAD})

State = Literal["loading", "ready", "failed"]


@dataclass(frozen=True)
class HostStatus:
    state: State
    reason: str
    model: str
    version: str | None


def freeze_startup_heap() -> None:
    """Keep what startup built out of the garbage collector's full passes.

    torch, FastAPI and the loaded model leave about 200,000 tracked objects; a full collection
    walks them all, 120 ms on one core of the benchmark machine, holding the GIL: every request
    in flight waits that long, and the p99 shows it. Frozen objects are skipped by every
    collection (Python's gc.freeze, as pre-fork servers use it); refcounting still frees them.
    Only reference cycles among them would never be collected: a runner breaks its own when it
    closes, so a version swapped out later is freed.
    """
    gc.collect()
    gc.freeze()


class ModelHost:
    def __init__(self, settings: Settings, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or ModelRegistry(settings.registry)
        self.device = pick_device(settings.device)
        if settings.retain_freed_memory:
            retain_freed_memory()
        if self.device.type == "cuda":
            set_cuda_math(allow_tf32=settings.cuda_tf32)
        self._runner: ModelRunner | None = None
        self.state: State = "loading"
        self.reason = "the model is loading"
        self.failed = asyncio.Event()

    @property
    def runner(self) -> ModelRunner | None:
        return self._runner

    @property
    def manifest(self) -> ModelManifest | None:
        return self._runner.manifest if self._runner else None

    def status(self) -> HostStatus:
        version = self._runner.manifest.version if self._runner else None
        return HostStatus(self.state, self.reason, self.settings.model, version)

    async def start(self) -> None:
        """Load the configured version with bounded retries; never raises."""
        attempts = self.settings.load_retries
        for attempt in range(1, attempts + 1):
            try:
                runner = await self.prepare_async()
            except Exception as exc:  # a user's model may raise anything: never die silently
                self.reason = f"loading failed (attempt {attempt} of {attempts}): {kind_of(exc)}"
                # The traceback too, where the cause is not the registry's or the artefact's.
                log.error(
                    "loading failed (attempt %d of %d): %s",
                    attempt,
                    attempts,
                    exc,
                    exc_info=not isinstance(exc, EXPECTED_LOAD_ERRORS),
                )
                if attempt < attempts:
                    await asyncio.sleep(min(2.0 ** min(attempt - 1, 10), 10.0))
                continue
            freeze_startup_heap()  # before the first request, not during one
            self._runner = runner
            self.state, self.reason = "ready", "the model is loaded, warm and checked"
            return
        self.state = "failed"
        self.failed.set()

    async def prepare_async(self, manifest: ModelManifest | None = None) -> ModelRunner:
        """`prepare` on a thread of its own, which shutdown does not wait for (a SIGTERM
        during a long load abandons it); a runner the thread still finishes is released."""
        return await on_daemon_thread(
            lambda: self.prepare(manifest), name=LOAD_THREAD, abandon=ModelRunner.close
        )

    def prepare(self, manifest: ModelManifest | None = None) -> ModelRunner:
        """Resolve, verify, load, warm up and check a version (blocking: run it in a thread)."""
        started = time.perf_counter()
        threads = self.settings.torch_threads or min(
            torch.get_num_threads(), cpu_threads(self.settings.workers)
        )
        torch.set_num_threads(threads)
        if manifest is None:
            # Seeding is for startup only: a followed switch names a version it just read from
            # this registry, which is therefore not empty.
            self._seed_demo_if_empty()
            manifest = self.registry.resolve(
                self.settings.model, self.settings.stage, self.settings.model_version
            )
        if manifest.format == "torchscript" and not self.settings.allow_torchscript:
            # Anyone who can write the registry can mark an artefact trusted; loading code is
            # the operator's decision, per server.
            raise ArtefactError(
                f"{manifest.name} {manifest.version} is TorchScript, which carries code: "
                "refused (set FRAMEWORM_ALLOW_TORCHSCRIPT=true to serve TorchScript)"
            )
        runner = ModelRunner(self.registry.load(manifest, self.device))  # sha256 verified
        try:
            channels_last = (
                self.device.type == "cpu"
                and self.settings.cpu_channels_last
                and runner.model.use_channels_last()
            )
            if self.settings.warmup:
                runner.warm_up(warmup_batch_sizes(self.settings.max_batch_size))
            run_golden_checks(runner.model)
        except BaseException:
            runner.close()
            raise
        log.info(
            "model ready",
            extra={
                "model": manifest.name,
                "version": manifest.version,
                "device": str(self.device),
                "channels_last": channels_last,
                # Batches past it run in slices: a .pt2 exported with a capped batch Dim.
                "max_batch": runner.model.max_batch,
                "torch_threads": torch.get_num_threads(),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        return runner

    def _seed_demo_if_empty(self) -> None:
        # `is_empty`, not a listing: another model's unreadable index must not stop this server.
        if self.settings.seed_demo and self.registry.is_empty():
            from models.demo import seed_demo

            seed_demo(self.registry, actor="frameworm-serve")
            log.warning(
                "the registry was empty: registered the demo models in %s", self.registry.store.url
            )

    def swap(self, runner: ModelRunner) -> ModelRunner | None:
        """Serve `runner` from the next batch on; the previous runner is returned, still loaded.

        The batcher reads `runner` once per batch, so a switch always falls between batches.
        """
        previous, self._runner = self._runner, runner
        self.state, self.reason = "ready", "the model is loaded, warm and checked"
        return previous

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
