"""A token bucket per key, in process memory, with bounded memory."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from .bounds import check_positive


class TokenBucketLimiter:
    """A bucket of `capacity` tokens per key, refilled at `refill_rate` tokens per second.

    Memory stays bounded: a key idle long enough to refill completely is indistinguishable from
    a new one, so it is dropped; past `max_keys` the least recently used key is dropped too.
    Thread-safe.
    """

    def __init__(
        self,
        capacity: float,
        refill_rate: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_positive(capacity=capacity, refill_rate=refill_rate, max_keys=max_keys)
        self.capacity = float(capacity)
        self.refill_rate = float(refill_rate)
        self.max_keys = max_keys
        self._clock = clock
        self._full_after_s = self.capacity / self.refill_rate
        self._lock = threading.Lock()
        # key -> (tokens, last update); ordered by last use, oldest first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, tokens: float = 1.0) -> bool:
        if not (math.isfinite(tokens) and tokens >= 0):
            raise ValueError("tokens must be a finite number, not negative")
        with self._lock:
            # Read under the lock: a `now` read before waiting for it may be older than the
            # bucket's last update by the time it is used.
            now = self._clock()
            self._evict_idle(now)
            available, last = self._available(key, now)
            allowed = tokens <= available
            if allowed:
                available -= tokens
            self._buckets[key] = (available, last)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return allowed

    def wait_s(self, key: str, tokens: float = 1.0) -> float:
        """Seconds until `key` has `tokens` (0 when it has them now): a Retry-After; infinite
        for more than the bucket holds, which never pass."""
        if tokens > self.capacity:
            return math.inf
        return max(0.0, (tokens - self.available(key)) / self.refill_rate)

    def available(self, key: str) -> float:
        with self._lock:
            return self._available(key, self._clock())[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def _available(self, key: str, now: float) -> tuple[float, float]:
        """The key's tokens at `now`, and the time they are as of (never earlier than before).

        A clock that steps back (or a caller-supplied one that is not monotonic) must neither
        take tokens away nor move `last` back, which would refill the same interval twice.
        """
        tokens, last = self._buckets.get(key, (self.capacity, now))
        elapsed = max(0.0, now - last)
        return min(self.capacity, tokens + elapsed * self.refill_rate), max(last, now)

    def _evict_idle(self, now: float) -> None:
        while self._buckets:
            key, (_, last) = next(iter(self._buckets.items()))
            if now - last < self._full_after_s:
                return
            del self._buckets[key]
