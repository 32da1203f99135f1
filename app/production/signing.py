"""HMAC-SHA256 request signatures that expire and are accepted once.

A signature is `"<unix seconds>.<64 lowercase hex>"`, the HMAC of `b"<timestamp>." + body`.
`verify` accepts it when the MAC matches, the timestamp is no older than `max_timestamp_age`
and no further ahead than `max_clock_skew`, and the same signature has not been accepted
before. Seen signatures are remembered only while their timestamp could still pass, so memory
is bounded by the rate of valid signatures times the window, and hard-capped by `max_entries`.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import re
import threading
import time

logger = logging.getLogger(__name__)

# ASCII digits without leading zeros: the MAC covers int(timestamp), which also accepts "0..."
# and non-ASCII digits, so any other spelling would be a new string that passes the replay check.
_SIGNATURE = re.compile(r"(0|[1-9][0-9]{0,11})\.([0-9a-f]{64})")


# What can be signed: a body as bytes, or text (signed as UTF-8).
Signable = bytes | bytearray | memoryview | str


def _as_bytes(value: Signable) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    # Not bytes(value) for anything: bytes(5) is five NUL bytes, and bytes(10**10) 10 GB.
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"data to sign must be bytes or str, not {type(value).__name__}")


class RequestSigner:
    """Sign and verify request bodies with a shared secret. Thread-safe."""

    def __init__(
        self,
        secret_key: bytes | str,
        max_timestamp_age: int = 300,
        *,
        max_clock_skew: int = 30,
        max_entries: int = 100_000,
    ) -> None:
        key = _as_bytes(secret_key)
        if len(key) < 16:
            raise ValueError("secret_key must be at least 16 bytes")
        if max_timestamp_age <= 0 or max_clock_skew < 0 or max_entries < 1:
            raise ValueError("max_timestamp_age and max_entries must be positive")
        self._key = key
        self.max_timestamp_age = int(max_timestamp_age)
        self.max_clock_skew = int(max_clock_skew)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._expiries: list[tuple[int, str]] = []  # a heap of (forget after, signature)

    def _mac(self, data: Signable, timestamp: int) -> str:
        message = f"{timestamp}.".encode() + _as_bytes(data)
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def sign(self, data: Signable, timestamp: int | None = None) -> str:
        stamp = int(time.time()) if timestamp is None else int(timestamp)
        return f"{stamp}.{self._mac(data, stamp)}"

    def verify(self, data: Signable, signature: str | None) -> bool:
        """True once per valid, fresh signature; False for anything else (never raises)."""
        if not isinstance(signature, str) or not isinstance(
            data, str | bytes | bytearray | memoryview
        ):
            return False
        match = _SIGNATURE.fullmatch(signature)
        if match is None:
            return False
        stamp = int(match.group(1))
        now = int(time.time())
        if now - stamp > self.max_timestamp_age or stamp - now > self.max_clock_skew:
            return False
        if not hmac.compare_digest(self._mac(data, stamp), match.group(2)):
            return False
        # Remember the canonical form, so no other spelling of this signature can replay it.
        return self._first_use(f"{stamp}.{match.group(2)}", stamp, now)

    def _first_use(self, signature: str, stamp: int, now: int) -> bool:
        # Past this instant the timestamp check rejects the signature anyway.
        forget_after = stamp + self.max_timestamp_age
        with self._lock:
            while self._expiries and self._expiries[0][0] < now:
                _, old = heapq.heappop(self._expiries)
                self._seen.discard(old)
            if signature in self._seen:
                logger.warning("replayed request signature rejected")
                return False
            if len(self._seen) >= self.max_entries:
                # Forgetting a live entry would re-open it to replay: refuse instead.
                logger.warning("signature replay cache is full; rejecting")
                return False
            self._seen.add(signature)
            heapq.heappush(self._expiries, (forget_after, signature))
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
