"""What the dynamic batcher reports as it works: queue depth, admissions, sheds, batches.

`app.telemetry.metrics.Metrics` implements it; `NoObserver` stands in with metrics off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.inference.runner import ModelRunner


class BatchObserver(Protocol):
    """What the batcher reports (metrics, traces); `telemetry.metrics` implements it."""

    def queued(self, depth_items: int) -> None: ...
    def admitted(self, delta: int) -> None: ...
    def shed(self, reason: str) -> None: ...
    def batch_done(
        self,
        runner: ModelRunner,
        items: int,
        seconds: float,
        waits: list[float],
        trace_ids: list[str | None] | None = None,
    ) -> None: ...


class NoObserver:
    """Reports nowhere: metrics off."""

    def queued(self, depth_items: int) -> None:
        pass

    def admitted(self, delta: int) -> None:
        pass

    def shed(self, reason: str) -> None:
        pass

    def batch_done(
        self,
        runner: ModelRunner,
        items: int,
        seconds: float,
        waits: list[float],
        trace_ids: list[str | None] | None = None,
    ) -> None:
        pass
