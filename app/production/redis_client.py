"""How every Redis client of the server connects (keys, rate limits, result cache).

Each round trip is bounded by the caller's timeout. A command that meets a connection the
server has closed is sent once more on a new one: a Redis restart leaves every pooled
connection stale, and redis-py, built from a URL, retries nothing, so each of them failed one
request (a 503 or a 429) at the next burst, however long after Redis was back. A timeout is not
retried: the bound stays the caller's.
"""

from __future__ import annotations

from typing import Any


def redis_options(timeout_s: float, *, asynchronous: bool) -> dict[str, Any]:
    """Keyword arguments for `from_url` of a client or pool (redis-py or redis.asyncio)."""
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as ConnectionClosed

    if asynchronous:
        from redis.asyncio.retry import Retry as AsyncRetry

        retry: Any = AsyncRetry(NoBackoff(), 1, supported_errors=(ConnectionClosed,))
    else:
        from redis.retry import Retry

        retry = Retry(NoBackoff(), 1, supported_errors=(ConnectionClosed,))
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "retry": retry}
