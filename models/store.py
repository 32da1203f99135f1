"""Where registry objects live, behind one small interface.

Keys are relative POSIX paths ("cnn-digits/1.0.0/manifest.json"). Every store offers
compare-and-swap on a key, which is what makes concurrent stage moves safe: two writers that
read the same state cannot both replace it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from filelock import FileLock

from models.errors import AccessDeniedError, ArtefactSizeError, InvalidNameError

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CHUNK = 1 << 20
# A temporary file is named ".<object>.<random hex>.tmp"; the glob matches exactly that hex, so
# the leftovers of "model.pt" are never taken for those of a "model.pt.x".
_TOKEN_BYTES = 8
_TOKEN_GLOB = "[0-9a-f]" * (2 * _TOKEN_BYTES)


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(not _KEY_PART.fullmatch(p) or p in {".", ".."} for p in parts):
        raise InvalidNameError(f"invalid storage key {key!r}")
    return key


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store(Protocol):
    """Storage for registry objects. Implementations: LocalStore, and S3Store (models.s3)."""

    url: str

    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    def swap(self, key: str, data: bytes, expected: bytes | None) -> bool:
        """Write `data` only if the object still holds `expected` (None: does not exist)."""

    def put_file(self, key: str, source: Path) -> None:
        """Copy a local file in (atomically: readers never see a partial object)."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write an object (atomically)."""

    def local_path(self, key: str, size: int | None = None) -> Path:
        """A local file with the object's bytes (remote stores download to a cache). With
        `size`, an object of another size raises ArtefactSizeError, before any download."""

    def list(self, prefix: str) -> list[str]:
        """Names directly under a key prefix ("" for the root)."""

    def forget_local_copy(self, key: str) -> None:
        """Drop the local copy `local_path` made of a remote object (a no-op for local stores):
        once an artefact is copied elsewhere, a cached copy would only hold a second full copy
        of it on disk."""


class LocalStore:
    """A directory. Compare-and-swap is a file lock around read-compare-rename."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*check_key(key).split("/"))
        # check_key already refuses "..", this guards against symlinks planted in the root.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidNameError(f"storage key {key!r} leaves the registry root")
        return path

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # a file where a folder would be
            return None

    def swap(self, key: str, data: bytes, expected: bytes | None) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=30):
            try:
                current: bytes | None = path.read_bytes()
            except FileNotFoundError:
                current = None
            if current != expected:
                return False
            self._atomic_write(path, data)
            return True

    def put_file(self, key: str, source: Path) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Under the key's lock, as every write: see _atomic_write. No timeout: a writer of an
        # artefact may hold it for minutes, and a killed one releases it with its process.
        with source.open("rb") as src, FileLock(str(path) + ".lock"):
            self._atomic_write(path, src)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            self._atomic_write(path, data)

    def local_path(self, key: str, size: int | None = None) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        if size is not None and (actual := path.stat().st_size) != size:
            raise ArtefactSizeError(key, size, actual)
        return path

    def forget_local_copy(self, key: str) -> None:
        """The file is the object itself: nothing to drop."""

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if _KEY_PART.fullmatch(p.name))

    @staticmethod
    def _atomic_write(path: Path, data: bytes | BinaryIO) -> None:
        """Write beside the target, fsync, rename: a crash leaves the old object or the new one.

        The caller holds the key's lock, as every writer of the key does: a temporary file of
        the key found now was left by a writer killed midway (kill -9 skips every cleanup).
        """
        for stale in path.parent.glob(f".{glob.escape(path.name)}.{_TOKEN_GLOB}.tmp"):
            stale.unlink(missing_ok=True)
        # Not mkstemp, whose files are 0600 whatever the umask: a registry shared by the CLI's
        # user and the server's needs 0666 & ~umask, like any other new file.
        tmp = path.parent / f".{path.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes):
                    out.write(data)
                else:
                    while chunk := data.read(CHUNK):
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def holds(store: Store, key: str) -> bool:
    """Whether the object exists, even one that cannot be read (a file of another user's, say):
    asking whether a registry holds something must not fail for one damaged object."""
    try:
        return store.read(key) is not None
    # InvalidNameError: a symlink out of the root, say; AccessDeniedError: S3's 403 for it.
    except (OSError, InvalidNameError, AccessDeniedError):
        return True


StoreKind = Literal["local", "s3"]


def open_store(location: str) -> Store:
    """A store from a location: a directory path, or s3://bucket/prefix."""
    if location.startswith("s3://"):
        from models.s3 import S3Store  # boto3 is imported only when an s3:// store is chosen

        return S3Store(location)
    return LocalStore(Path(location))
