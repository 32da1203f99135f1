"""Where API key records live: a JSON file, a read-only mounted file, or Redis.

Records hold only the HMAC of each secret. All stores share one JSON shape,
`{"version": 1, "keys": [record, ...]}`, so the file a `FileKeyStore` writes (what `frameworm
keys create` maintains in FRAMEWORM_API_KEYS_FILE) can be mounted as a Kubernetes Secret and read
by `HashedFileKeyStore`. (`frameworm keys list --json` prints the records without their hashes,
for people; it is not such a file.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from filelock import FileLock

from .key_records import KeyRecord, dump_records, load_records, parse_json
from .redis_client import redis_options

if TYPE_CHECKING:
    import redis
    import redis.asyncio

logger = logging.getLogger(__name__)


class ReadOnlyKeyStoreError(RuntimeError):
    """The store is a mounted file; change the Secret it comes from instead."""


class KeyFileError(RuntimeError):
    """The key file exists but cannot be read or parsed (a listing or change was refused)."""


# The signature of a key file that cannot even be looked at: the read that follows fails like
# any unreadable file's, so running servers keep their last keys (it escaped as a 503 for all).
UNSTATABLE = (-1, -1, -1)


class KeyStore(Protocol):
    """What `APIKeyAuth` needs from a store. `get`/`aget` are lookups by id, never scans."""

    def add(self, record: KeyRecord) -> None: ...
    def get(self, key_id: str) -> KeyRecord | None: ...
    async def aget(self, key_id: str) -> KeyRecord | None: ...
    def revoke(self, key_id: str, when: float) -> bool: ...
    def records(self) -> list[KeyRecord]: ...


class HashedFileKeyStore:
    """Read-only records from a JSON file (e.g. mounted from a Kubernetes Secret).

    The file is re-read when its identity changes, checked at most every `refresh_s`, so a
    Secret update or another process's write is seen within that time. A missing file is empty.
    """

    def __init__(self, path: str | Path, *, refresh_s: float = 1.0) -> None:
        self.path = Path(path)
        self.refresh_s = refresh_s
        self._lock = threading.RLock()
        self._records: dict[str, KeyRecord] = {}
        self._signature: tuple[int, int, int] | None = None
        self._unreadable: tuple[int, int, int] | None = None  # the file last found unreadable
        self._checked = float("-inf")

    def _file_signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)  # follows the Secret volume's symlink swap
        except FileNotFoundError:
            return None
        except OSError:  # a directory turned unreadable, say: read (and fail) as unreadable
            return UNSTATABLE
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self, *, force: bool = False) -> dict[str, KeyRecord]:
        """The records, re-read when the file changed. `force` re-reads now and raises
        KeyFileError when that fails: a change must start from the file, never from a cache
        that a fresh process (the CLI) holds empty."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked < self.refresh_s:
                return self._records
            self._checked = now
            signature = self._file_signature()
            unreadable = self._unreadable is not None and signature == self._unreadable
            if (signature == self._signature or unreadable) and not force:
                return self._records  # unchanged, or the same unreadable file: said already
            try:
                text = self.path.read_text(encoding="utf-8") if signature else None
                self._records = load_records(text)
                self._signature, self._unreadable = signature, None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if force:
                    raise KeyFileError(
                        f"cannot read key file {self.path} ({type(exc).__name__}: {exc}); "
                        "left unchanged: fix or restore it"
                    ) from exc
                # Keep serving the last good set rather than locking everybody out.
                self._unreadable = signature
                logger.error("cannot read key file %s (%s: %s)", self.path, type(exc).__name__, exc)
            return self._records

    def get(self, key_id: str) -> KeyRecord | None:
        return self._refresh().get(key_id)

    async def aget(self, key_id: str) -> KeyRecord | None:
        # A stat at most every refresh_s and a small read on change: cheap enough inline.
        return self._refresh().get(key_id)

    def records(self) -> list[KeyRecord]:
        # An admin listing: a file that cannot be read is an error, not an empty (or stale) list.
        return sorted(self._refresh(force=True).values(), key=lambda r: r.created)

    def add(self, record: KeyRecord) -> None:
        raise ReadOnlyKeyStoreError(f"{self.path} is read-only; update the Secret it mounts")

    def revoke(self, key_id: str, when: float) -> bool:
        raise ReadOnlyKeyStoreError(f"{self.path} is read-only; update the Secret it mounts")


class FileKeyStore(HashedFileKeyStore):
    """A writable JSON key file: mode 0600, written atomically, safe across processes."""

    def __init__(self, path: str | Path, *, refresh_s: float = 1.0) -> None:
        super().__init__(path, refresh_s=refresh_s)
        # Serialises read-modify-write between processes (the CLI and the server). FileLock
        # would make a missing directory with the umask's mode (0755): made private first.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file_lock = FileLock(str(self.path) + ".lock", timeout=10)

    def add(self, record: KeyRecord) -> None:
        with self._file_lock, self._lock:
            records = dict(self._refresh(force=True))
            if record.id in records:
                raise ValueError(f"key id {record.id} already exists")
            records[record.id] = record
            self._write(records)

    def revoke(self, key_id: str, when: float) -> bool:
        with self._file_lock, self._lock:
            records = dict(self._refresh(force=True))
            record = records.get(key_id)
            if record is None:
                return False
            if record.revoked is None:
                records[key_id] = replace(record, revoked=when)
                self._write(records)
            return True

    def _write(self, records: dict[str, KeyRecord]) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file 0600, so no reader ever sees it with wider permissions.
        fd, tmp = tempfile.mkstemp(prefix=".api-keys-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(dump_records(records.values()))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_directory(directory)
        self._records = records
        self._signature = self._file_signature()
        self._checked = time.monotonic()


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RedisKeyStore:
    """Records in Redis, one JSON string per key id; changes are visible to all at once. Admin
    operations use a blocking client; `aget` (the request path) uses redis.asyncio, with at
    most `max_connections` connections: a burst beyond them waits, within `timeout_s`."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "frameworm:apikey:",
        timeout_s: float = 1.0,
        max_connections: int = 100,
    ) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._client: redis.Redis = redis.Redis.from_url(
            url, **redis_options(timeout_s, asynchronous=False)
        )
        self._lock = threading.Lock()
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None

    def _key(self, key_id: str) -> str:
        return self.prefix + key_id

    @staticmethod
    def _decode(raw: bytes | str | None, name: str | bytes) -> KeyRecord | None:
        try:
            return None if raw is None else KeyRecord.from_dict(parse_json(raw))
        except (ValueError, KeyError, TypeError) as exc:
            _no_record(name, exc)
            return None

    def _async_client(self) -> redis.asyncio.Redis:
        import redis.asyncio

        loop = asyncio.get_running_loop()
        with self._lock:
            # A redis.asyncio connection belongs to the loop that opened it.
            if self._async is None or self._async[0] is not loop:
                # Blocking: the default pool fails at once past 100 connections, so a burst (of
                # made-up keys, say) was a 503 while Redis was fine. `aget` bounds the wait.
                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    self.url,
                    max_connections=self.max_connections,
                    timeout=self.timeout_s,
                    **redis_options(self.timeout_s, asynchronous=True),
                )
                self._async = (loop, redis.asyncio.Redis.from_pool(pool))
            return self._async[1]

    def add(self, record: KeyRecord) -> None:
        payload = json.dumps(record.to_dict())
        if not self._client.set(self._key(record.id), payload, nx=True):
            raise ValueError(f"key id {record.id} already exists")

    def _read(self, client: redis.Redis, name: str | bytes) -> KeyRecord | None:
        with _values_of_another_type_are_no_key(name):
            return self._decode(client.get(name), name)
        return None

    def get(self, key_id: str) -> KeyRecord | None:
        return self._read(self._client, self._key(key_id))

    async def aget(self, key_id: str) -> KeyRecord | None:
        name = self._key(key_id)
        with _values_of_another_type_are_no_key(name):
            # One bound on the lookup, the wait for a connection and the retry included.
            async with asyncio.timeout(self.timeout_s):
                return self._decode(await self._async_client().get(name), name)
        return None

    def revoke(self, key_id: str, when: float) -> bool:
        import redis

        name = self._key(key_id)
        with self._client.pipeline() as pipe:
            while True:
                try:
                    # Optimistic lock: retry if another writer touched the record meanwhile.
                    pipe.watch(name)  # type: ignore[no-untyped-call]
                    record = self._read(pipe, name)
                    if record is None:
                        return False
                    if record.revoked is not None:
                        return True
                    pipe.multi()
                    pipe.set(name, json.dumps(replace(record, revoked=when).to_dict()))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def records(self) -> list[KeyRecord]:
        records = []
        for name in self._client.scan_iter(match=self.prefix + "*", count=500):
            record = self._read(self._client, name)
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.created)

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        """Close both clients; call it on the loop that used `aget`."""
        with self._lock:
            current, self._async = self._async, None
        if current is not None:
            await current[1].aclose()
        self.close()


@contextlib.contextmanager
def _values_of_another_type_are_no_key(name: str | bytes) -> Iterator[None]:
    """A value that is no string (a hash, say: WRONGTYPE) is no key, nor a store outage."""
    import redis

    try:
        yield
    except redis.ResponseError as exc:
        if not str(exc).startswith("WRONGTYPE"):
            raise
        _no_record(name, exc)


def _no_record(name: str | bytes, exc: Exception) -> None:
    """A value written by hand past the CLI's checks is no key, not a 500 or 503 on every use."""
    reason = f"{type(exc).__name__}: {exc}"
    logger.error("an invalid key record in Redis at %r, refused (%s)", name, reason)
