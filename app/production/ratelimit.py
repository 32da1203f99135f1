"""Rate limits over a moving window: in this process, or in Redis through the `limits` library.

`RateLimiter` keeps its counters in the storage named by `storage_uri`:

* `memory://` (default): this process only, counted by `MovingWindow` (same semantics as the
  library's memory storage, without its expiry timer thread). Sync and async calls share one
  counter; it does no I/O, so the async path uses it directly without blocking the loop.
* `redis://`, `rediss://`, `redis+unix://`: shared by every process and replica. The sync API
  uses a blocking client; `hit()` uses the `limits` async storage on redis.asyncio, bounded by
  `timeout_s`. The Lua scripts of `limits` keep the count exact under concurrency.

When the storage fails or is slow, calls fail open (allow) or closed (deny) per `fail_open`,
log the state change once, and never raise.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from limits import RateLimitItem, RateLimitItemPerSecond, parse_many
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.production.redis_client import redis_options
from app.production.window import MovingWindow

if TYPE_CHECKING:
    import redis
    import redis.asyncio

logger = logging.getLogger(__name__)

StorageKind = Literal["memory", "redis"]
# Each scheme the limiter accepts, by the kind of storage behind it.
STORAGE_SCHEMES: dict[str, StorageKind] = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "redis+unix": "redis",
}


# "N per 0 seconds": `limits` reads the 0 as no multiple, i.e. one second.
_ZERO_PERIODS = re.compile(r"(?:/|per)\s*0+\s*[a-z]", re.IGNORECASE)
# Bounds far above any real limit. Past about 1e17 requests or 9.2e15 s (its milliseconds
# overflow Redis's 64-bit integers) every Redis hit failed, taken for a storage outage, and
# memory storage sent a Retry-After of 8.6e15 s.
MAX_AMOUNT = 10**12
MAX_PERIOD_S = 36_500 * 86_400  # 100 years


@functools.lru_cache(maxsize=256)
def parse_limit(text: str) -> RateLimitItem:
    """Parse one limit such as `"100/minute"` or `"10 per 2 seconds"`; ValueError when invalid.

    `limits` also reads several limits (`"2/second;3/minute"`), a zero amount and zero periods;
    each is refused here: only the first of several limits would be enforced, and a limit of
    zero would refuse every request for good. So are amounts above MAX_AMOUNT and periods
    above MAX_PERIOD_S (100 years).
    """
    if not isinstance(text, str):
        raise ValueError("a rate limit is a string such as '100/minute'")
    try:
        items = parse_many(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a limit such as 100/minute") from None
    if len(items) != 1:
        raise ValueError(f"one rate limit only, such as '100/minute', not {text!r}")
    if items[0].amount < 1 or _ZERO_PERIODS.search(text):
        raise ValueError(f"a rate limit allows at least 1 request in at least 1 period: {text!r}")
    if items[0].amount > MAX_AMOUNT or items[0].get_expiry() > MAX_PERIOD_S:
        raise ValueError(
            f"a rate limit allows at most 10^12 requests in at most 100 years (36500 days): "
            f"{text!r}"
        )
    return items[0]


# When to try again after a storage failure (a degraded decision's reset).
STORAGE_RETRY_S = 2.0


class RateLimitDecision(NamedTuple):
    """One hit's outcome, with what the RateLimit-* and Retry-After headers need.

    A named tuple, not a frozen dataclass: one is made per request, and a frozen dataclass's
    `__init__` (an `object.__setattr__` per field) cost five times as much.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after_s: float
    degraded: bool = False  # the storage failed: no RateLimit-* headers; see `RateLimiter.hit`

    @property
    def retry_after_s(self) -> int:
        """Whole seconds for a Retry-After header (at least 1)."""
        return max(1, math.ceil(self.reset_after_s))


_SCHEME = re.compile(r"([a-z][a-z0-9+.-]{0,31})://", re.IGNORECASE)


def url_scheme(url: str) -> str:
    """`name://` of a URL that starts with one, else "no scheme": never more of it, since a
    URL that does not parse may put a password where its scheme would be."""
    match = _SCHEME.match(url)
    return f"{match[1]}://" if match else "no scheme"


def _storage_kind(uri: str) -> tuple[StorageKind, str]:
    plain = uri.removeprefix("async+")
    scheme = url_scheme(plain)
    kind = STORAGE_SCHEMES.get(scheme.removesuffix("://"))
    if kind is None:  # the message names the scheme only: a redis:// URL may hold a password
        choices = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
        raise ValueError(f"unsupported rate-limit storage ({scheme}); use one of {choices}")
    return kind, plain


class RateLimiter:
    """`max_requests` per moving window of `window_seconds`, per key."""

    def __init__(
        self,
        max_requests: int,
        window_seconds: int | float,
        storage_uri: str = "memory://",
        fail_open: bool = True,
        timeout_s: float = 0.25,
        *,
        key_prefix: str = "frameworm",
        max_connections: int = 32,
    ) -> None:
        if not 1 <= max_requests <= MAX_AMOUNT:
            raise ValueError("max_requests must be at least 1 and at most 10^12")
        if not 1 <= window_seconds <= MAX_PERIOD_S or float(window_seconds) != int(window_seconds):
            raise ValueError("window_seconds must be a whole number of seconds, 1 to 100 years")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.max_requests = int(max_requests)
        self.window_seconds = int(window_seconds)
        self.fail_open = fail_open
        self.timeout_s = float(timeout_s)
        self.max_connections = max_connections
        self._item: RateLimitItem = RateLimitItemPerSecond(self.max_requests, self.window_seconds)
        self._kind, self._uri = _storage_kind(storage_uri)
        self._key_prefix = key_prefix
        self._lock = threading.Lock()
        self._sync: MovingWindowRateLimiter | None = None
        self._async: tuple[asyncio.AbstractEventLoop, AsyncMovingWindow] | None = None
        self._sync_pool: redis.ConnectionPool | None = None
        self._async_pool: redis.asyncio.ConnectionPool | None = None
        self._healthy = True
        self._memory = MovingWindow() if self._kind == "memory" else None
        if self._kind == "redis":
            # Imported now, not inside the first hit's `timeout_s` (it takes a few hundred ms
            # on a busy machine, and made every process's first request fail open or closed).
            import redis.asyncio  # noqa: F401

    @classmethod
    def from_string(cls, limit: str, **options: Any) -> RateLimiter:
        """Build from a limit string such as `"100/minute"`."""
        item = parse_limit(limit)
        return cls(item.amount, item.get_expiry(), **options)

    # -- storages (made on first use: the async one belongs to the running loop) ----------
    def _redis_url(self) -> str:
        return self._uri.replace("redis+unix://", "unix://", 1)

    def _sync_strategy(self) -> MovingWindowRateLimiter:
        with self._lock:
            if self._sync is None:
                options: dict[str, Any] = {}
                if self._kind == "redis":
                    import redis

                    # Our own pool, so close() can release its sockets.
                    self._sync_pool = redis.ConnectionPool.from_url(
                        self._redis_url(), **redis_options(self.timeout_s, asynchronous=False)
                    )
                    options = {"connection_pool": self._sync_pool, "key_prefix": self._key_prefix}
                self._sync = MovingWindowRateLimiter(storage_from_string(self._uri, **options))
            return self._sync

    def _async_strategy(self) -> AsyncMovingWindow:
        import redis.asyncio

        loop = asyncio.get_running_loop()
        with self._lock:
            if self._async is None or self._async[0] is not loop:
                # Blocking pool: a burst waits (within timeout_s) for a connection instead of
                # failing with "too many connections".
                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    self._redis_url(),
                    max_connections=self.max_connections,
                    timeout=self.timeout_s,
                    **redis_options(self.timeout_s, asynchronous=True),
                )
                options: dict[str, Any] = {
                    "implementation": "redispy",  # redis-py, not the default coredis
                    "connection_pool": pool,
                    "key_prefix": self._key_prefix,
                }
                storage = storage_from_string("async+" + self._uri, **options)
                self._async = (loop, AsyncMovingWindow(storage))
                self._async_pool = pool
            return self._async[1]

    def close(self) -> None:
        """Release the blocking client's connections (a no-op for memory storage)."""
        with self._lock:
            pool, self._sync_pool, self._sync = self._sync_pool, None, None
        if pool is not None:
            pool.disconnect()

    async def aclose(self) -> None:
        """Release every connection; call it on the loop that used `hit()`."""
        with self._lock:
            pool, self._async_pool, self._async = self._async_pool, None, None
        if pool is not None:
            await pool.disconnect()
        self.close()

    # -- sync API (the checklist's) -------------------------------------------------------
    def allow(self, key: str) -> bool:
        return self._decide_sync(self._item, key).allowed

    def get_remaining(self, key: str) -> int:
        if self._memory is not None:
            return max(0, self._memory.stats(key, self.max_requests, self.window_seconds).remaining)
        try:
            stats = self._sync_strategy().get_window_stats(self._item, key)
        except Exception as exc:
            self._storage_failed(exc)
            return self.max_requests if self.fail_open else 0
        self._storage_ok()
        return max(0, stats.remaining)

    def reset(self, key: str, *, limit: str | None = None) -> None:
        item = self._item if limit is None else parse_limit(limit)
        if self._memory is not None:
            self._memory.clear(key, item.amount, item.get_expiry())
            return
        try:
            self._sync_strategy().clear(item, key)
        except Exception as exc:
            self._storage_failed(exc)

    # -- async API (the middleware's) -----------------------------------------------------
    async def hit(self, key: str, *, limit: str | None = None) -> RateLimitDecision:
        """Count one request for `key` against `limit` (default: this limiter's own)."""
        item = self._item if limit is None else parse_limit(limit)
        if self._memory is not None:
            return self._decide_sync(item, key)  # no I/O: nothing to await
        # One bound for both round trips, but each failure apart: once the hit has answered,
        # it was counted (or refused), and a slow stats read must not turn it into "nothing
        # counted".
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            strategy = self._async_strategy()  # no I/O: the pool connects on first use
            async with asyncio.timeout_at(deadline):
                allowed = await strategy.hit(item, key)
        except Exception as exc:  # includes TimeoutError: a slow storage is a failed one
            self._storage_failed(exc)
            return self._degraded(item)
        try:
            async with asyncio.timeout_at(deadline):
                stats = await strategy.get_window_stats(item, key)
        except Exception as exc:
            self._storage_failed(exc)
            return self._without_stats(item, allowed)
        self._storage_ok()
        return self._decision(item, allowed, stats.remaining, stats.reset_time)

    # -- internals ------------------------------------------------------------------------
    def _decide_sync(self, item: RateLimitItem, key: str) -> RateLimitDecision:
        if self._memory is not None:
            state = self._memory.hit(key, item.amount, item.get_expiry())
            return self._decision(item, state.allowed, state.remaining, state.reset_time)
        try:
            strategy = self._sync_strategy()
            allowed = strategy.hit(item, key)
        except Exception as exc:
            self._storage_failed(exc)
            return self._degraded(item)
        try:
            stats = strategy.get_window_stats(item, key)
        except Exception as exc:
            self._storage_failed(exc)
            return self._without_stats(item, allowed)
        self._storage_ok()
        return self._decision(item, allowed, stats.remaining, stats.reset_time)

    @staticmethod
    def _decision(
        item: RateLimitItem, allowed: bool, remaining: int, reset_time: float
    ) -> RateLimitDecision:
        return RateLimitDecision(
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, remaining),
            reset_after_s=max(0.0, reset_time - time.time()),
        )

    def _degraded(self, item: RateLimitItem) -> RateLimitDecision:
        # Denied (failing closed) for as long as the storage is out, not for a window: a
        # client told to retry in a day would wait a day for a blip.
        return RateLimitDecision(
            allowed=self.fail_open,
            limit=item.amount,
            remaining=item.amount if self.fail_open else 0,
            reset_after_s=STORAGE_RETRY_S,
            degraded=True,
        )

    @staticmethod
    def _without_stats(item: RateLimitItem, allowed: bool) -> RateLimitDecision:
        """The hit's own answer, when the window's stats could not be read after it.

        An allowed hit was counted: it is served, without RateLimit-* headers (what remains is
        unknown). A refused one met a full window: 429, told to retry after at most the window.
        """
        if allowed:
            return RateLimitDecision(True, item.amount, item.amount, 0.0, degraded=True)
        return RateLimitDecision(False, item.amount, 0, float(item.get_expiry()))

    def _storage_failed(self, exc: BaseException) -> None:
        # Log the transition, not every request: a down Redis must not flood the logs.
        with self._lock:
            was_healthy, self._healthy = self._healthy, False
        policy = "open (allowing)" if self.fail_open else "closed (denying)"
        if was_healthy:
            logger.warning("rate-limit storage failed (%s); failing %s", type(exc).__name__, policy)
        else:
            logger.debug("rate-limit storage still failing (%s)", type(exc).__name__)

    def _storage_ok(self) -> None:
        with self._lock:
            was_healthy, self._healthy = self._healthy, True
        if not was_healthy:
            logger.info("rate-limit storage recovered")
