"""The lifespan hook: resources up at startup, and the last part of the drain at shutdown.

Startup makes the model host and batcher, then loads the model in a background task so the
server listens (and /healthz answers) while it loads; that task then follows the stage alias
when FRAMEWORM_FOLLOW_STAGE is on. Shutdown runs after uvicorn has closed
the listener and finished the connections (the drain itself starts at SIGTERM, see
`app.serve`): 1. the batcher answers what is left with 503 within a bound, 2. the
GracefulShutdown hooks run, the server's and those its users started, each after the work it
tracks has finished (every wait bounded),
3. telemetry is flushed (a hook), 4. the model is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.types import Message, Receive, Send

from app.config import Settings
from app.inference.batcher import DynamicBatcher
from app.inference.cache import ResultCache
from app.inference.daemon_thread import on_daemon_thread
from app.inference.host import ModelHost
from app.inference.pending import cancelling
from app.inference.rollout import StageFollower
from app.inference.service import build_cache
from app.production import GracefulShutdown
from app.telemetry.gpu import GpuSampler, load_nvml
from app.telemetry.metrics import Metrics, multiprocess_dir

log = logging.getLogger("frameworm.lifespan")

HOOK_TIMEOUT_S = 5.0
QUEUE_CLOSE_TIMEOUT_S = 1.0
METRICS_FLUSH_S = 1.0


@dataclass
class Lifecycle:
    """What the server process and the app share about starting and stopping."""

    shutdown: GracefulShutdown
    joined: list[GracefulShutdown] = field(default_factory=list)  # users' start() calls
    model_failed: asyncio.Event = field(default_factory=asyncio.Event)
    batcher: DynamicBatcher | None = None
    host: ModelHost | None = None
    # Called at the shutdown deadline with the batcher's close: each answers what it holds.
    at_shutdown_deadline: list[Callable[[], Awaitable[int]]] = field(default_factory=list)
    releasing: asyncio.Task[None] | None = None  # the lifespan's shutdown, once it has begun

    @property
    def ever_ready(self) -> bool:
        """Whether a model was ever served, so that endpoints may still route traffic here."""
        return self.host is not None and self.host.runner is not None

    def join(self, other: GracefulShutdown) -> None:
        self.joined.append(other)
        if self.shutdown.is_shutting_down:
            other.begin()

    def begin_drain(self) -> bool:
        """Flip every GracefulShutdown to shutting down; False if the drain had already begun."""
        for other in self.joined:
            other.begin()
        return self.shutdown.begin()

    def skip_release(self) -> None:
        """A second signal during the lifespan's shutdown: what is left of it is abandoned.

        Before it, uvicorn skips that shutdown itself; once it has begun, uvicorn awaits it to
        the end (up to 5 s for a forward pass, as long again for each hook).
        """
        if self.releasing is not None:
            self.releasing.cancel()

    async def shed_stragglers(self) -> tuple[int, int]:
        """The app-side shutdown deadline: answer everything still waiting with 503 now.

        Returns the batcher's items answered (queued or running), then the other requests
        answered (a body still arriving, a request being decoded).
        """
        items = await self.batcher.close(timeout_s=0) if self.batcher else 0
        await asyncio.sleep(0)  # the requests just failed answer themselves: not counted again
        requests = 0
        for answer_waiting in self.at_shutdown_deadline:
            requests += await answer_waiting()
        return items, requests


async def _load(
    host: ModelHost, lifecycle: Lifecycle, metrics: Metrics | None, follower: StageFollower | None
) -> None:
    await host.start()
    if host.state == "failed":
        lifecycle.model_failed.set()
        return
    if metrics is not None:
        metrics.model_serving(host.manifest, host.settings.served_as, str(host.device))
    if follower is not None:
        await follower.run()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    lifecycle: Lifecycle = app.state.lifecycle
    # First: should it raise, nothing has started yet (a model load already running on its
    # thread aborted the process as the interpreter exited).
    cache = build_cache(settings, app.state.metrics)
    host = ModelHost(settings)
    batcher = DynamicBatcher(
        lambda: host.runner,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_batch_delay_ms / 1000,
        max_queue_items=settings.max_queue_items,
        observer=app.state.metrics,
        tracer=app.state.tracer,
    )
    lifecycle.batcher, lifecycle.host = batcher, host
    batcher.start()
    metrics: Metrics | None = app.state.metrics
    gpu: GpuSampler | None = None
    flushing: asyncio.Task[None] | None = None
    if metrics is not None:
        metrics.model_serving(None, settings.served_as, str(host.device))
        metrics.queue_capacity.labels(settings.model).set(settings.max_queue_items)
        nvml = load_nvml()
        if nvml is not None:
            gpu = GpuSampler(metrics.registry, nvml)
            gpu.start()
        if multiprocess_dir() is not None:
            flushing = asyncio.create_task(_flush_tallies(metrics), name="frameworm-metrics")
    follower = None
    if settings.follow_stage and settings.model_version is not None:
        log.warning(
            "FRAMEWORM_FOLLOW_STAGE is ignored: FRAMEWORM_MODEL_VERSION pins %s (and with it "
            "automatic rollback)",
            settings.model_version,
        )
    if settings.follow_stage and settings.model_version is None:
        follower = StageFollower(host, settings, metrics)
        batcher.outcome_listener = follower.record
    loading = asyncio.create_task(
        _load(host, lifecycle, metrics, follower), name="frameworm-model-load"
    )
    forced = False
    try:
        yield {
            "settings": settings,
            "host": host,
            "batcher": batcher,
            "lifecycle": lifecycle,
            "follower": follower,
            "cache": cache,
        }
    except asyncio.CancelledError:
        # A second signal: uvicorn exits at once and cancels this. Its stragglers have had
        # their 503s; the hooks and the model release (up to 5 s for a pass) are skipped.
        forced = True
        raise
    finally:
        lifecycle.begin_drain()
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        if flushing is not None:
            flushing.cancel()
        if not forced:
            lifecycle.releasing = asyncio.create_task(
                _release(lifecycle, batcher, cache, follower, host, gpu), name="frameworm-release"
            )
            try:
                await lifecycle.releasing
            except asyncio.CancelledError:
                if cancelling():  # this task's own cancellation, not a second signal's
                    raise
                log.warning("forced exit: the rest of the drain's hooks and model release skipped")
            finally:
                if metrics is not None:  # the last counts (with workers, into the shared files)
                    metrics.flush()


async def _flush_tallies(metrics: Metrics) -> None:
    """With several workers, /metrics adds up every worker's shared files, and a scrape flushes
    only the tallies of the worker it reaches: each worker writes its own there every second."""
    while True:
        await asyncio.sleep(METRICS_FLUSH_S)
        metrics.flush()


async def _release(
    lifecycle: Lifecycle,
    batcher: DynamicBatcher,
    cache: ResultCache | None,
    follower: StageFollower | None,
    host: ModelHost,
    gpu: GpuSampler | None,
) -> None:
    """The lifespan's shutdown, in order, each step bounded."""
    # 1. Anything still queued gets a 503 body now, not a dropped connection.
    abandoned = await batcher.close(timeout_s=QUEUE_CLOSE_TIMEOUT_S)
    if abandoned:
        log.warning("answered %d item(s), queued or running, with 503 at shutdown", abandoned)
    # 2./3. Hooks: the server's (telemetry flush among them), then its users', each after
    # the work it tracks (`track_request`) has finished, within the same bound.
    for shutdown in (lifecycle.shutdown, *lifecycle.joined):
        await shutdown.wait_for_inflight(timeout=HOOK_TIMEOUT_S)
        await shutdown.run_handlers(timeout_per_handler=HOOK_TIMEOUT_S)
    if cache is not None:
        await cache.close()
    # 4. The model goes last: nothing can reach it any more.
    # On daemon threads: a second signal abandons them, where `asyncio.run` would join the
    # default executor's threads (the model's release waits up to 5 s for a forward pass).
    if follower is not None:
        await on_daemon_thread(follower.close, name="frameworm-release")
    await on_daemon_thread(host.close, name="frameworm-release")
    if gpu is not None:
        await on_daemon_thread(gpu.stop, name="frameworm-release")


def quiet_forced_exit(receive: Receive, send: Send) -> tuple[Receive, Send]:
    """The lifespan's channel, with a forced exit reported in one line.

    A second signal makes uvicorn exit at once: it skips the lifespan shutdown and cancels the
    lifespan task, which Starlette reports as a failed shutdown with the cancellation's
    traceback, logged as an error. The exit was asked for; its one line says what it skipped.
    """
    cancelled = False

    async def receive_noting_cancellation() -> Message:
        nonlocal cancelled
        try:
            return await receive()
        except asyncio.CancelledError:
            cancelled = True
            raise

    async def send_quietly(message: Message) -> None:
        if cancelled and message["type"] == "lifespan.shutdown.failed":
            log.warning("forced exit: the drain's hooks and the model release were skipped")
            message = {"type": "lifespan.shutdown.failed", "message": ""}  # uvicorn logs none
        await send(message)

    return receive_noting_cancellation, send_quietly
