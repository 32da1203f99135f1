"""A request waiting in the batcher (`Pending`), what it gets back (`Served`), how it ends early."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from opentelemetry import trace

from app.errors import Problem, retry_after

if TYPE_CHECKING:
    from models.manifest import ModelManifest

log = logging.getLogger("frameworm.batcher")


@dataclass
class Served:
    outputs: list[np.ndarray]
    version: str


@dataclass
class Pending:
    arrays: list[np.ndarray]
    items: int
    deadline: float
    future: asyncio.Future[Served]
    enqueued: float = field(default_factory=time.monotonic)
    # The deadline is the client's own, shorter than the server's: missing it says nothing
    # about the version (a client could otherwise fail any version it likes).
    client_deadline: bool = False
    request_id: str | None = None  # for the log line if the model fails on it
    # Only when tracing is on: the request's span, and wall-clock times for the queue span.
    span: trace.SpanContext | None = None
    enqueued_ns: int = 0
    dispatched_ns: int = 0
    # Counted in the queue's items until a batch takes it or its waiter gives up, first of the
    # two: the deque entry of a request given up stays until the loop reaches it.
    queued: bool = True


def abandon(future: asyncio.Future[Served]) -> None:
    if not future.done():
        future.set_exception(Problem("client-closed-request", "the client went away"))


def abandoned(future: asyncio.Future[Served]) -> bool:
    problem = None if future.cancelled() else future.exception()
    return isinstance(problem, Problem) and problem.code == "client-closed-request"


def late(pending: Pending) -> bool:
    """Answered 504 while its batch ran: late, which rollout health counts against the
    version. One whose client went away says nothing about it, nor does one that missed a
    deadline shorter than the server's."""
    future = pending.future
    return future.done() and not (
        future.cancelled() or abandoned(future) or pending.client_deadline
    )


def fail(pending: Pending, problem: Problem) -> None:
    if not pending.future.done():
        pending.future.set_exception(problem)


def model_failed(pending: Pending, error: Exception, manifest: ModelManifest) -> None:
    """The model raised on this request alone (a batch of one): the traceback is logged under
    its request id, and it is answered 500 naming the version that failed."""
    version = manifest.version
    context = {"request_id": pending.request_id, "model": manifest.name, "version": version}
    log.error("the model failed on a request", exc_info=error, extra=context)
    problem = Problem("internal-error", "the model failed on this batch", version=version)
    problem.__cause__ = error  # for error tracking; never shown to the client
    fail(pending, problem)


def shutting_down() -> Problem:
    return Problem("shutting-down", "the server is shutting down", headers=retry_after(1))


def cancelling() -> bool:
    """Whether the running task is being cancelled (rather than something it awaits)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
