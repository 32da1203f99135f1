"""Following a stage alias: zero-downtime switches between versions, and automatic rollback.

With FRAMEWORM_FOLLOW_STAGE=true the server polls its model's index (one small read) and, when
the alias moves: loads and warms the new version beside the serving one, runs its golden
checks, and switches between two batches; the old version is released after its last batch.
A version that fails to load or check is never switched to: the old one keeps serving, and the
failure is logged, counted and shown in /readyz?verbose until the alias moves again.

Automatic rollback (FRAMEWORM_AUTO_ROLLBACK=true): after a switch the old version stays loaded
for a window; if the new version's error rate or p99 breaches its bound there, the server
switches back and pins the old version locally until the alias moves again. It never writes to
the registry (which may be read-only, and replicas would race), so it cannot flap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

from app.config import Settings
from app.inference.daemon_thread import on_daemon_thread
from app.inference.host import EXPECTED_LOAD_ERRORS, ModelHost, kind_of
from app.inference.runner import ModelRunner
from app.telemetry.metrics import Metrics
from models.errors import RegistryError
from models.manifest import Stage
from models.stages import ModelIndex

log = logging.getLogger("frameworm.rollout")

READ_THREAD = "frameworm-registry-read"
# A registry read that has not answered by then is said in /readyz?verbose and the log (a read
# that fails says so at once; one that hangs said nothing), and waited for still.
READ_STALL_S = 10.0
LATENCY_SAMPLES = 10_000
# The p99 sorts up to LATENCY_SAMPLES values on the event loop: judged at most this often,
# not per request. The error rate is a division and is judged on every outcome.
P99_CHECK_INTERVAL_S = 1.0


@dataclass
class VersionHealth:
    """Outcomes of the requests one version served since it was switched to."""

    version: str
    ok: int = 0
    failed: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    @property
    def requests(self) -> int:
        return self.ok + self.failed

    @property
    def error_rate(self) -> float:
        return self.failed / self.requests if self.requests else 0.0

    def p99(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def _last_move(index: ModelIndex, stage: Stage) -> int:
    """Where in the history the stage was last set: it changes with every move of the alias."""
    for position in range(len(index.history) - 1, -1, -1):
        if index.history[position].stage == stage:
            return position
    return -1


@dataclass
class _Observation:
    previous: ModelRunner
    target: str  # the alias value that was followed
    health: VersionHealth
    until: float


class StageFollower:
    def __init__(self, host: ModelHost, settings: Settings, metrics: Metrics | None) -> None:
        self.host = host
        self.settings = settings
        self.metrics = metrics
        self.refused: dict[str, str] = {}  # alias target -> why it was not switched to
        self.pinned_against: str | None = None  # an alias target rolled back from
        self.last_event = "following the stage alias"
        self._observing: _Observation | None = None
        self._next_p99_check = 0.0
        self._seen_move: tuple[str | None, int] | None = None  # (alias target, its last move)
        # asyncio keeps only weak references to tasks: a rollback must not be collected mid-way.
        self._rollbacks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.settings.follow_interval_s)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a registry hiccup must not end the loop
                # Said once per outage (a poll every few seconds would flood the log), and in
                # /readyz?verbose for as long as it lasts.
                self.last_event = f"cannot follow the stage alias: {kind_of(exc)}; retrying"
                if not failing:
                    log.error(
                        "following the stage alias failed (%s); retrying every %gs",
                        exc,
                        self.settings.follow_interval_s,
                        exc_info=not isinstance(exc, EXPECTED_LOAD_ERRORS),
                    )
                failing = True
            else:
                if failing:
                    log.info("following the stage alias again")
                    if self.last_event.startswith("cannot follow"):
                        self.last_event = "following the stage alias"
                failing = False

    async def check_once(self) -> None:
        await self._finish_observation_if_due()
        serving = self.host.manifest
        if serving is None:
            return
        index = await self._read_index()
        target = index.aliases.get(self.settings.stage)
        move = (target, _last_move(index, self.settings.stage))
        if move != self._seen_move:
            # The alias was set again (even back to the serving version, or to the same one
            # between two polls): refusals and the rollback pin were for the previous move.
            self._seen_move = move
            if self.refused or self.pinned_against is not None:
                self.last_event = "following the stage alias"  # no longer why it stays put
            self.refused.clear()
            self.pinned_against = None
        if target is None or target == serving.version or target in self.refused:
            return
        if target == self.pinned_against:
            return  # rolled back from it; wait for the alias to move again
        # An operator's `registry rollback` already chose where to go back to: the version it
        # left is not kept as a fallback, so no automatic rollback can return to it.
        rolled_back = move[1] >= 0 and index.history[move[1]].action == "rollback"
        await self.switch_to(target, keep_fallback=not rolled_back, following=True)

    # ------------------------------------------------------------------ switching
    async def _read_index(self) -> ModelIndex:
        # Not in asyncio's default executor, which the loop's end waits for without a bound: a
        # stalled registry (S3 retrying for minutes) held the process past the drain.
        model = self.settings.model
        read = asyncio.ensure_future(
            on_daemon_thread(lambda: self.host.registry.index(model), name=READ_THREAD)
        )
        try:
            if not (await asyncio.wait({read}, timeout=READ_STALL_S))[0]:
                before = self.last_event
                stalled = self.last_event = (
                    f"cannot follow the stage alias: a registry read has not answered in "
                    f"{READ_STALL_S:g} s; waiting for it"
                )
                log.warning(stalled)
                index = await read
                log.info("the stalled registry read answered")
                if self.last_event == stalled:  # nothing newer to say meanwhile
                    self.last_event = before
                return index
        except asyncio.CancelledError:
            read.cancel()  # the loop is ending: its thread is left to finish alone
            raise
        return read.result()

    async def _moved_from(self, version: str) -> bool:
        try:
            return (await self._read_index()).aliases.get(self.settings.stage) != version
        except Exception:  # unreadable just now: it named this version moments ago
            return False

    async def switch_to(
        self, version: str, *, keep_fallback: bool = True, following: bool = False
    ) -> bool:
        """Load, check and swap in `version`; `following`: only while the alias still names it."""
        serving = self.host.manifest
        self.last_event = f"loading {version}"  # /readyz?verbose named the last event meanwhile
        try:
            manifest = await on_daemon_thread(
                lambda: self.host.registry.manifest(self.settings.model, version),
                name=READ_THREAD,
            )
            if self.host.manifest is not None and self.host.manifest.version == version:
                # An automatic rollback swapped it in while the manifest was read.
                self.last_event = f"{version} is served already"
                return True
            if serving is not None and manifest.signature != serving.signature:
                raise RegistryError(
                    "its signature differs from the serving version's; roll out a new deployment"
                )
            # The version kept for rollback is loaded and warm: swapped back, not loaded again
            # (which held three versions at once, in the middle of an operator's rollback).
            # Read after the await: a rollback meanwhile may have taken it into service.
            observing = self._observing
            kept = observing.previous if observing is not None else None
            reused = kept is not None and kept.manifest == manifest
            runner = (
                kept if kept is not None and reused else await self.host.prepare_async(manifest)
            )
        except Exception as exc:  # refused, not retried: the same bytes would fail the same way
            self.refused[version] = kind_of(exc)
            self.last_event = f"refused {version}: {kind_of(exc)}"
            log.error(
                "not switching to %s %s: %s",
                self.settings.model,
                version,
                exc,
                exc_info=not isinstance(exc, EXPECTED_LOAD_ERRORS),
            )
            if self.metrics is not None:
                self.metrics.model_load_failures.labels(self.settings.model).inc()
            return False
        try:
            moved = following and not reused and await self._moved_from(version)
        except asyncio.CancelledError:  # the drain: the version loaded is not served
            runner.close()
            raise
        if moved:
            # Moved again while this version loaded (an operator's rollback, say): the version
            # rolled back from was switched to and served all the same. The next poll follows.
            self.last_event = f"{version} loaded, but the stage alias moved on: not switched"
            log.info(self.last_event)
            await asyncio.to_thread(runner.close)
            return False
        # A version still kept for rollback is released: the one being replaced now becomes
        # the version to fall back to (the alias moved on; so does the rollback target).
        superseded, self._observing = self._observing, None
        previous = self.host.swap(runner)
        self.last_event = f"switched to {version}" + (
            f" from {previous.manifest.version}" if previous else ""
        )
        log.info(self.last_event)
        self._serving_changed()
        if superseded is not None and not reused:
            await asyncio.to_thread(superseded.previous.close)
        if previous is None:
            return True
        if self.settings.auto_rollback and keep_fallback:
            self._observing = _Observation(
                previous,
                version,
                VersionHealth(version),
                time.monotonic() + self.settings.rollback_window_s,
            )
        else:
            # Its thread releases it after its last in-flight batch; this waits, bounded.
            await asyncio.to_thread(previous.close)
        return True

    # ------------------------------------------------------------------ health after a switch
    def record(self, version: str, ok: bool, seconds: float) -> None:
        """Called by the batcher per request (outcome_listener)."""
        observing = self._observing
        if observing is None or version != observing.health.version:
            return
        now = time.monotonic()
        if now >= observing.until:
            return  # past its window: judged no more (the next poll releases the fallback)
        health = observing.health
        if ok:
            health.ok += 1
            health.latencies.append(seconds)
        else:
            health.failed += 1
        if health.requests < self.settings.rollback_min_requests:
            return
        judge_p99 = now >= self._next_p99_check
        if judge_p99:
            self._next_p99_check = now + P99_CHECK_INTERVAL_S
        if self._breached(health, judge_p99=judge_p99):
            self._observing = None  # one rollback per breach, however many outcomes follow
            task = asyncio.get_running_loop().create_task(self.roll_back(observing))
            self._rollbacks.add(task)
            task.add_done_callback(self._rollbacks.discard)

    async def rollbacks_done(self) -> None:
        """Wait for the rollbacks that outcomes have started (tests, and anyone draining)."""
        await asyncio.gather(*self._rollbacks)

    def _breached(self, health: VersionHealth, *, judge_p99: bool = True) -> str | None:
        if health.error_rate > self.settings.rollback_max_error_rate:
            return (
                f"error rate {health.error_rate:.1%} > {self.settings.rollback_max_error_rate:.1%}"
            )
        bound = self.settings.rollback_max_p99_ms
        if judge_p99 and bound is not None and (p99 := health.p99()) * 1000 > bound:
            return f"p99 {p99 * 1000:.0f} ms > {bound:g} ms"
        return None

    async def roll_back(self, observing: _Observation | None = None) -> None:
        """Back to the version kept for rollback (the current observation's, by default)."""
        if observing is None:
            observing, self._observing = self._observing, None
        if observing is None:
            return
        serving = self.host.manifest
        if serving is None or serving.version != observing.health.version:
            # A switch came first (the rollback was decided as it ended): what is served now
            # was not judged, and the version kept for the rollback is no longer needed.
            await asyncio.to_thread(observing.previous.close)
            return
        why = self._breached(observing.health) or "unhealthy"
        bad = self.host.swap(observing.previous)
        self.pinned_against = observing.target
        self.last_event = (
            f"rolled back from {observing.health.version} to "
            f"{observing.previous.manifest.version}: {why}; pinned until the alias moves again"
        )
        log.error(self.last_event)
        if self.metrics is not None:
            self.metrics.model_rollbacks.labels(self.settings.model).inc()
        self._serving_changed()
        if bad is not None:
            await asyncio.to_thread(bad.close)

    async def _finish_observation_if_due(self) -> None:
        observing = self._observing
        if observing is None or time.monotonic() < observing.until:
            return
        self._observing = None
        self.last_event = f"{observing.health.version} passed its rollback window"
        await asyncio.to_thread(observing.previous.close)

    def _serving_changed(self) -> None:
        if self.metrics is not None:
            self.metrics.model_serving(
                self.host.manifest, self.settings.stage, str(self.host.device)
            )
            self.metrics.model_switches.labels(self.settings.model).inc()

    def close(self) -> None:
        """Release a version kept for rollback (at shutdown)."""
        if self._observing is not None:
            self._observing.previous.close()
            self._observing = None
