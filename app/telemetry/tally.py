"""Observations kept as plain numbers on the event loop, added to prometheus_client's series.

prometheus_client takes a lock for every increment and finds a histogram's bucket by walking its
bounds in Python: for the five HTTP series and the batcher's, about 1,000 bytecodes a request,
the largest part of what the hardening layers cost (issue 8's profile). The series written on
every request are written by one thread, the event loop's, so they need no lock: a tally keeps
what was observed since it was last flushed, and `Tallies.flush` adds that to the prometheus_client
values (through their `inc`/`set`, under their locks, in multiprocess mode into the shared files).

The metric objects, their names, labels, buckets and exposition are prometheus_client's, unchanged.
What a scrape reads is exact: `Metrics.render` flushes first. Only another process reading the
shared files of several workers sees a worker's counts as of its last flush (every second).

Every method here, `flush` included, must run on the event loop's thread.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram, Summary


class _Flushable(Protocol):
    def flush(self) -> None: ...


_T = TypeVar("_T", bound=_Flushable)


class Tallies:
    """The tallies of one registry, flushed together."""

    def __init__(self) -> None:
        self._members: list[_Flushable] = []

    def counter(self, child: Counter) -> CounterTally:
        return self._add(CounterTally(child))

    def summary(self, child: Summary) -> SummaryTally:
        return self._add(SummaryTally(child))

    def histogram(self, child: Histogram) -> HistogramTally:
        return self._add(HistogramTally(child))

    def gauge(self, child: Gauge) -> GaugeTally:
        return self._add(GaugeTally(child))

    def _add(self, tally: _T) -> _T:
        self._members.append(tally)
        return tally

    def flush(self) -> None:
        for tally in self._members:
            tally.flush()


class CounterTally:
    __slots__ = ("_child", "pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self.pending = 0

    def flush(self) -> None:
        if self.pending:
            self._child.inc(self.pending)
            self.pending = 0


class SummaryTally:
    """A Summary child without quantiles (prometheus_client's have none): a count and a sum."""

    __slots__ = ("_child", "_count", "_sum")

    def __init__(self, child: Summary) -> None:
        self._child = child
        self._count = 0
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._count += 1
        self._sum += value

    def flush(self) -> None:
        if self._count:
            # prometheus_client's Summary.observe is these two increments, one at a time.
            self._child._count.inc(self._count)
            self._child._sum.inc(self._sum)
            self._count, self._sum = 0, 0.0


class HistogramTally:
    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)  # the last is +Inf
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, value: float) -> None:
        # The first bound at or above the value: the bucket prometheus_client's observe picks.
        # NaN falls in no bucket there (every comparison is false); it is left out here.
        if value == value:
            self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._pending = True

    def observe_with_exemplar(self, value: float, exemplar: dict[str, str]) -> None:
        """Straight to prometheus_client, which keeps the exemplar with its bucket (rare: only
        sampled requests have one)."""
        self._child.observe(value, exemplar=exemplar)

    def flush(self) -> None:
        if not self._pending:
            return
        self._child._sum.inc(self._sum)
        for bucket, count in zip(self._child._buckets, self._counts, strict=True):
            if count:
                bucket.inc(count)
        self._counts = [0] * len(self._bounds)
        self._sum, self._pending = 0.0, False


class GaugeTally:
    """A gauge's latest value; written to prometheus_client when it changed."""

    __slots__ = ("_child", "_written", "value")

    def __init__(self, child: Gauge) -> None:
        self._child = child
        self.value = 0.0
        self._written = math.nan

    def flush(self) -> None:
        if self.value != self._written:
            self._child.set(self.value)
            self._written = self.value
