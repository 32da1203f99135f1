"""DynamicBatcher: packs the items of concurrent requests into batches for the model.

Rules, in the order they apply:
- a request carries one or more items along the batch dimension; batches hold at most
  `max_batch_size` items (a larger request runs alone);
- the queue is bounded in items: past it, requests are shed with 503 and Retry-After;
- admission control: when the expected wait (queued items / batch size x recent batch time)
  would outlast the request's deadline, it is answered 503 at once instead of aging in line
  (504 when the deadline is one the client chose: its own choice, not an overload);
  with nothing queued or running there is nothing to wait behind, and the request is admitted
  (only batches that run refresh the timing, so an idle server must let them run);
- a request with more items than the queue holds can never run here: 413, not a retry;
- an idle model gets the next batch at once; only while the server is busy (the last batch
  held several items and ended moments ago) does the batcher wait, at most `max_delay_s`,
  for a batch to fill;
- a request whose deadline passes in the queue is answered 504 before the model sees it;
- a batch that raises runs again in halves, down to the requests that fail alone (500).
Waiting is event-driven: no polling loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from opentelemetry import trace

from app.errors import Problem, retry_after
from app.inference.batch_spans import forward_batch, record_queue_wait, sampled, sampled_trace_id
from app.inference.observer import BatchObserver, NoObserver
from app.inference.pending import (
    Pending,
    Served,
    abandon,
    abandoned,
    cancelling,
    fail,
    late,
    model_failed,
    shutting_down,
)
from app.inference.runner import ModelRunner

log = logging.getLogger("frameworm.batcher")

ADMISSION_HEADROOM = 1.25
RECENT_BATCHES = 16


class DynamicBatcher:
    def __init__(
        self,
        runner: Callable[[], ModelRunner | None],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_items: int,
        observer: BatchObserver | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_items < 1 or max_delay_s < 0:
            raise ValueError("batch size and queue bound must be >= 1, the delay >= 0")
        self._runner = runner
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_items = max_queue_items
        self._observer: BatchObserver = observer or NoObserver()
        self._tracer = tracer
        # Per request: (version, succeeded, seconds since it was queued); for rollout health.
        self.outcome_listener: Callable[[str, bool, float], None] | None = None
        self._queue: deque[Pending] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._busy_until = 0.0  # monotonic time until which the server counts as busy
        # The slowest of the last few batches: admission control plans with a bad case, not
        # the average, so that what it admits meets its deadline.
        self._recent_batches: deque[float] = deque(maxlen=RECENT_BATCHES)
        self.in_flight_items = 0
        self.running_since: float | None = None  # monotonic, while a forward pass runs
        self._batch: list[Pending] = []  # the one running, halves and all

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="frameworm-batcher")

    async def close(self, timeout_s: float) -> int:
        """Stop taking work, drain within the bound; returns the items abandoned, queued or run."""
        self._closing = True
        self._wakeup.set()
        if self._task is None:
            return 0
        abandoned = 0
        if not self._task.done():  # an earlier close (the shutdown deadline) may have ended it
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:  # the running batch's requests not yet answered get 503 too
                abandoned = sum(p.items for p in self._batch if not p.future.done())
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except asyncio.CancelledError:
                # Another close (the shutdown deadline's) cancelled the loop: not this caller.
                if not self._task.cancelled() or cancelling():
                    raise
        while self._queue:
            pending = self._queue.popleft()
            if pending.queued:
                abandoned += pending.items
            self._unqueue(pending)
            fail(pending, shutting_down())
        self._observer.queued(self._queued_items)  # the gauge: nothing is left queued
        return abandoned

    @property
    def batch_seconds(self) -> float:
        """A recent bad-case forward time of one batch; 0 before the first batch."""
        return max(self._recent_batches, default=0.0)

    def expected_wait_s(self, items: int = 1) -> float:
        """Time until a request of `items` queued now has its answer: the batches ahead (the
        running pass's and the queue's), then its own; a request larger than a batch counts as
        the batches it holds."""
        batches = math.ceil(self._queued_items / self.max_batch_size) + math.ceil(
            items / self.max_batch_size
        )
        per_batch = self.batch_seconds
        if per_batch == 0:  # no live batch timed yet: start from the warm-up's measurement
            runner = self._runner()
            per_batch = runner.batch_seconds if runner is not None else 0.0
        if self.running_since is not None:
            running = math.ceil(self.in_flight_items / self.max_batch_size)
            batches += running
            # A pass that has already outrun the estimate proves it stale (the machine turned
            # slower than the batches timed so far): plan with what it has taken, per batch.
            per_batch = max(per_batch, (time.monotonic() - self.running_since) / running)
        return batches * per_batch

    async def submit(
        self,
        arrays: list[np.ndarray],
        items: int,
        deadline: float,
        *,
        client_deadline: bool = False,
        on_abandon: Callable[[Callable[[], None]], None] | None = None,
        request_id: str | None = None,
        traced: bool = True,
    ) -> Served:
        """Queue one request's items; its outputs come back split along the batch dimension.

        `client_deadline`: the deadline is one the client chose, shorter than the server's.
        `on_abandon` is handed a function that gives the request up (its client went away):
        still queued, it never reaches the model. `request_id` names it in the log if it fails.
        `traced=False`: the request has no span (not sampled), so none is looked up for it.
        """
        now = time.monotonic()
        if self._closing:
            raise shutting_down()
        if deadline <= now:
            self._observer.shed("deadline")
            raise Problem("deadline-exceeded", "the request's deadline passed before it could run")
        if items > self.max_queue_items:
            raise Problem(
                "payload-too-large",
                f"{items} items in one request; this server queues at most {self.max_queue_items}",
            )
        if self._queued_items + items > self.max_queue_items:
            self._observer.shed("queue_full")
            raise Problem(
                "overloaded", "the queue is full", headers=retry_after(self.expected_wait_s())
            )
        self._admit(now, items, deadline, client_deadline)
        future: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        pending = Pending(arrays, items, deadline, future, now, client_deadline, request_id)
        if self._tracer is not None and traced:
            pending.span = trace.get_current_span().get_span_context()
            pending.enqueued_ns = time.time_ns()
        if on_abandon is not None:
            on_abandon(lambda: abandon(future))
        self._queue.append(pending)
        self._queued_items += items
        self._observer.queued(self._queued_items)
        self._observer.admitted(1)
        self._wakeup.set()
        # At the deadline the future fails with 504 (unless answered): one timer handle, where
        # asyncio.timeout costs several times as much per request.
        expiry = asyncio.get_running_loop().call_later(deadline - now, self._expire, pending)
        try:
            served = await future
            if self._tracer is not None and pending.dispatched_ns and sampled(pending.span):
                record_queue_wait(self._tracer, pending.enqueued_ns, pending.dispatched_ns)
            return served
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # A forced exit (a second SIGTERM) cancels the requests left, its batch still in
            # the forward pass: answered like the rest of a shutdown, not uvicorn's bare 500.
            raise shutting_down() from None
        finally:
            expiry.cancel()
            self._observer.admitted(-1)
            if pending.queued:  # gave up (deadline, client gone, cancelled) while still queued
                self._unqueue(pending)
                pending.arrays = []  # its entry waits in the deque: keep it small
                self._observer.queued(self._queued_items)

    def _admit(self, now: float, items: int, deadline: float, client_deadline: bool) -> None:
        """Admission control: refuses at once a request that the expected wait would make miss
        its deadline, when there is something to wait behind."""
        wait = self.expected_wait_s(items)
        # Headroom: batch times vary, and decoding and answering cost time outside the model.
        busy = self._queued_items > 0 or self.in_flight_items > 0
        if busy and now + wait * ADMISSION_HEADROOM > deadline:
            if client_deadline:
                # The client's own deadline, shorter than the server's, is the one it would
                # miss: 504, as when it passes in the queue (and the v2 route counts it under
                # client_deadline), not an overload 503 that the error-rate alert counts.
                self._observer.shed("deadline")
                raise Problem(
                    "deadline-exceeded", "the expected wait exceeds the deadline the client set"
                )
            self._observer.shed("admission")
            raise Problem(
                "overloaded",
                "the expected wait exceeds the request's deadline",
                headers=retry_after(wait),
            )

    def _unqueue(self, pending: Pending) -> None:
        if pending.queued:
            pending.queued = False
            self._queued_items -= pending.items

    def _expire(self, pending: Pending) -> None:
        if not pending.future.done():
            if pending.queued:  # shed: answered without running the model (not in its pass)
                self._observer.shed("deadline")
            fail(pending, Problem("deadline-exceeded", "the request's deadline passed"))

    # ------------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._maybe_wait_to_fill()
            self._batch = batch = self._take()
            if not batch:
                continue
            try:
                await self._run(batch)
            except Exception:  # past the batch's own guard (telemetry, listeners): log, go on
                log.exception("the batcher failed after a batch of %d requests", len(batch))
                for pending in batch:
                    fail(pending, Problem("internal-error", "the server failed on this batch"))
            self._batch = []  # its requests' inputs are not held until the next batch

    async def _maybe_wait_to_fill(self) -> None:
        if self._closing or self._queued_items >= self.max_batch_size or self.max_delay_s == 0:
            return
        now = time.monotonic()
        if now >= self._busy_until:
            return  # idle: dispatch at once
        fill_deadline = self._queue[0].enqueued + self.max_delay_s
        while (
            not self._closing
            and self._queued_items < self.max_batch_size
            and (left := fill_deadline - time.monotonic()) > 0
        ):
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[Pending]:
        now = time.monotonic()
        batch: list[Pending] = []
        items = 0
        while self._queue:
            head = self._queue[0]
            if batch and items + head.items > self.max_batch_size and not head.future.done():
                break
            self._queue.popleft()
            self._unqueue(head)
            if head.future.done():  # the client gave up (deadline, disconnect)
                if abandoned(head.future):
                    self._observer.shed("disconnected")
                continue
            if head.deadline <= now:
                self._observer.shed("deadline")
                expired = "the request's deadline passed while it was queued"
                fail(head, Problem("deadline-exceeded", expired))
                continue
            batch.append(head)
            items += head.items
        self._observer.queued(self._queued_items)
        return batch

    async def _run(self, batch: list[Pending], retried: bool = False) -> None:
        runner = self._runner()
        if runner is None:
            for pending in batch:
                fail(pending, Problem("not-ready", "no model is loaded", headers=retry_after(1)))
            return
        items = sum(p.items for p in batch)
        start = time.monotonic()
        self.in_flight_items, self.running_since = items, start
        try:
            outputs = await forward_batch(runner, batch, items, self._tracer)
        except asyncio.CancelledError:
            # close() ran out of time mid-batch: these requests still get an answer.
            for pending in batch:
                fail(pending, shutting_down())
            raise
        except Exception as exc:
            # A failed pass took the device's time too: observed, or a model slow and then
            # failing showed in neither the inference nor the HTTP latency of its requests.
            self._observe(runner, batch, items, start, retried)
            if len(batch) > 1:
                log.warning("batch of %d items failed (%s)", items, type(exc).__name__)
                # The halves run only the requests still waiting: those already answered 504
                # count against the version here, as when the pass succeeds late.
                self._report_outcomes(runner, [(p, False) for p in batch if late(p)])
                await self._run_halves(batch)
                return
            for pending in batch:  # one request: logged under its own request id
                model_failed(pending, exc, runner.manifest)
            self._report_outcomes(runner, [(p, False) for p in batch])
            return
        finally:
            self.in_flight_items, self.running_since = 0, None
        seconds = self._observe(runner, batch, items, start, retried)
        # A request larger than a batch runs alone: of a batch's time, it tells its share.
        self._recent_batches.append(seconds * min(1.0, self.max_batch_size / items))
        self._busy_until = start + seconds + self.max_delay_s if items > 1 else 0.0
        version = runner.manifest.version
        offset = 0
        outcomes: list[tuple[Pending, bool]] = []
        for pending in batch:
            part = [out[offset : offset + pending.items] for out in outputs]
            offset += pending.items
            if not pending.future.done():
                pending.future.set_result(Served(part, version))
                outcomes.append((pending, True))
            elif late(pending):
                outcomes.append((pending, False))
        self._report_outcomes(runner, outcomes)

    async def _run_halves(self, batch: list[Pending]) -> None:
        """A failed batch, run again in halves, and those that fail in halves again: a request
        whose input is what failed (a model asserting on values) ends alone, failing alone and
        counting against the version alone, in about 2 log2(n) more passes."""
        waiting = [pending for pending in batch if not pending.future.done()]
        try:
            for half in (waiting[: len(waiting) // 2], waiting[len(waiting) // 2 :]):
                if half:
                    await self._run(half, retried=True)
        except asyncio.CancelledError:  # close() ran out of time: the rest still get an answer
            for pending in batch:
                fail(pending, shutting_down())
            raise

    def _observe(
        self, runner: ModelRunner, batch: list[Pending], items: int, start: float, retried: bool
    ) -> float:
        """The pass's seconds, reported; each request's queue wait at its first pass only."""
        seconds = time.monotonic() - start
        first = [] if retried else batch
        trace_ids = [sampled_trace_id(p.span) for p in first] if self._tracer else None
        waits = [start - p.enqueued for p in first]
        self._observer.batch_done(runner, items, seconds, waits, trace_ids)
        return seconds

    def _report_outcomes(self, runner: ModelRunner, outcomes: list[tuple[Pending, bool]]) -> None:
        listener = self.outcome_listener
        if listener is None:
            return
        now = time.monotonic()
        for pending, ok in outcomes:
            listener(runner.manifest.version, ok, now - pending.enqueued)
