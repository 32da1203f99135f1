"""The key records' format: one API key's record, and the JSON document every store shares,
`{"version": 1, "keys": [record, ...]}` (a Redis store keeps each record alone, in the same
shape)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .ratelimit import parse_limit

Scope = Literal["infer", "admin"]
SCOPES: tuple[Scope, ...] = ("infer", "admin")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class KeyRecord:
    """One API key, without its secret. Times are Unix seconds."""

    id: str
    owner: str
    scopes: tuple[str, ...]
    created: float
    hash: str
    expires: float | None = None
    revoked: float | None = None
    rate_limit: str | None = None

    def has_usable_limit(self) -> bool:
        """Whether `rate_limit` is one the server can apply (or none). A record may hold one it
        cannot: written by hand into a key file or Redis, or by a version that accepted
        `2/second;3/minute` (only the first limit counted) or `0/minute`."""
        try:
            return self.rate_limit is None or parse_limit(self.rate_limit) is not None
        except (ValueError, TypeError):  # TypeError: an unhashable value such as a list
            return False

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires is not None and (time.time() if now is None else now) >= self.expires

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scopes"] = list(self.scopes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(
            id=str(data["id"]),
            owner=str(data["owner"]),
            scopes=tuple(str(s) for s in data.get("scopes", ("infer",))),
            created=_seconds(data["created"]),
            hash=_digest(data["hash"]),
            expires=None if data.get("expires") is None else _seconds(data["expires"]),
            revoked=None if data.get("revoked") is None else _seconds(data["revoked"]),
            rate_limit=data.get("rate_limit"),
        )


def _digest(value: Any) -> str:
    # Compared with hmac.compare_digest, which raises TypeError for non-ASCII text: a record
    # edited by hand with one made every lookup of its key id a 500.
    digest = str(value)
    if not digest.isascii():
        raise ValueError("not a key hash: non-ASCII text")
    return digest


def _seconds(value: Any) -> float:
    # JSON's NaN (which json.loads reads) compares false with every time: an `expires` of NaN
    # never expired. Non-finite times are malformed, like text.
    try:
        seconds = float(value)
    except OverflowError:  # an integer past float's range (JSON allows any): not a time either
        raise ValueError(f"not a time: {str(value)[:32]}...") from None
    if not math.isfinite(seconds):
        raise ValueError(f"not a time: {value!r}")
    return seconds


def dump_records(records: Iterable[KeyRecord]) -> str:
    """The shared JSON document for a set of records."""
    keys = [r.to_dict() for r in sorted(records, key=lambda r: r.created)]
    return json.dumps({"version": FORMAT_VERSION, "keys": keys}, indent=2, sort_keys=True)


def parse_json(text: str | bytes) -> Any:
    """JSON of a key file or a Redis key record. json.loads raises RecursionError, not a
    ValueError, for deeply nested arrays: it escaped every handler (a 503 for every client)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("not a key record: JSON nested too deeply") from None


def load_records(text: str | None) -> dict[str, KeyRecord]:
    """The records of a key file's text; None: no file, so no keys. A file that is there but
    empty (truncated, or an empty Secret) is an error like any other unreadable file, so
    running servers keep the keys they had rather than refusing every client."""
    if text is None:
        return {}
    if not text.strip():
        raise ValueError("the key file is empty")
    document = parse_json(text)
    if not isinstance(document, dict) or document.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValueError("not a Frameworm key file (version 1)")
    return {r.id: r for r in (KeyRecord.from_dict(item) for item in document["keys"])}
