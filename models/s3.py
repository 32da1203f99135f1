"""S3Store: registry objects in S3-compatible storage (AWS S3, MinIO, Ceph RGW, R2, ...).

Location: `s3://bucket/prefix`. The endpoint is `FRAMEWORM_S3_ENDPOINT_URL` when set, else what
boto3 resolves itself (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, config files); credentials and
region come from the standard AWS chain.

Compare-and-swap is S3's conditional write: `If-None-Match: *` creates only when the key is
absent, `If-Match: <etag>` replaces only the object that was compared. The server checks and
writes atomically, so of two writers holding the same ETag exactly one succeeds.

`local_path` downloads into a cache keyed by bucket/prefix/key. A cached copy is used only
while the remote ETag is the one it was downloaded with and its bytes still hash to what was
downloaded; otherwise it is fetched again, so the cache never serves stale or altered bytes.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from models.errors import AccessDeniedError, ArtefactSizeError, InvalidNameError, RegistryError
from models.store import CHUNK, check_key, sha256_file

try:
    import boto3
    import botocore.loaders
    import botocore.session
    from boto3.exceptions import S3UploadFailedError
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )
except ImportError as exc:  # pragma: no cover - the s3 extra is installed in development
    raise RegistryError("s3:// registries need boto3: pip install 'frameworm[s3]'") from exc

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MISSING = {"NoSuchKey", "404", "NotFound"}
_LOST_RACE = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}


class S3Error(RegistryError):
    """An S3 request failed; the message says which bucket and why, in one line."""


class S3BucketNotFoundError(S3Error):
    pass


class S3AccessDeniedError(S3Error, AccessDeniedError):
    pass


class S3UnreachableError(S3Error):
    pass


class S3OutcomeUnknownError(S3Error):
    """A conditional write whose first answer was lost: it may or may not have been applied."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise InvalidNameError(f"not an s3:// location: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.fullmatch(bucket):
        raise InvalidNameError(f"invalid S3 bucket name {bucket!r} in {url!r}")
    if prefix and any(not _KEY_PART.fullmatch(p) for p in prefix.split("/")):
        raise InvalidNameError(f"invalid S3 prefix {prefix!r} in {url!r}")
    return bucket, prefix


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "frameworm" / "s3"


@functools.cache
def _service_models() -> Any:
    # Parsing botocore's service descriptions is most of a client's start-up cost (~0.5 s);
    # the loader only reads packaged files, so every session may share one.
    return botocore.loaders.create_loader()


def _client() -> Any:
    endpoint = os.environ.get("FRAMEWORM_S3_ENDPOINT_URL") or None
    custom = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    core = botocore.session.get_session()
    core.register_component("data_loader", _service_models())
    session = boto3.session.Session(botocore_session=core)
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        # Self-hosted S3 (MinIO, Ceph) is reached by path, not by bucket subdomains.
        s3={"addressing_style": "path" if custom else "auto"},
    )
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=session.region_name or "us-east-1",
        config=config,
    )


class S3Store:
    """A bucket and key prefix. Compare-and-swap is a conditional PUT (If-Match / If-None-Match)."""

    def __init__(self, url: str, *, client: Any = None, cache_dir: Path | None = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._s3 = client if client is not None else _client()
        cache = cache_dir or default_cache_dir()
        self._cache = cache.joinpath(self.bucket, *filter(None, self.prefix.split("/")))

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # ------------------------------------------------------------------ reads
    def read(self, key: str) -> bytes | None:
        got = self._get(key)
        return None if got is None else got[0]

    def _get(self, key: str) -> tuple[bytes, str] | None:
        with self._errors(key):
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    return None
                raise
            body = response["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data, str(response["ETag"])

    def list(self, prefix: str) -> list[str]:
        base = f"{self._key(prefix)}/" if prefix else (f"{self.prefix}/" if self.prefix else "")
        names: set[str] = set()
        with self._errors(prefix or "/"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    names.add(common["Prefix"][len(base) :].rstrip("/"))
                for item in page.get("Contents", []):
                    names.add(item["Key"][len(base) :])
        return sorted(n for n in names if _KEY_PART.fullmatch(n))

    # ------------------------------------------------------------------ writes
    def swap(self, key: str, data: bytes, expected: bytes | None) -> bool:
        if expected is None:
            condition = {"IfNoneMatch": "*"}
        else:
            current = self._get(key)
            if current is None or current[0] != expected:
                return False
            # The PUT succeeds only if the object is still the one just compared.
            condition = {"IfMatch": current[1]}
        with self._errors(key):
            try:
                self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except ClientError as exc:
                if _code(exc) in _LOST_RACE or (expected is not None and _code(exc) in _MISSING):
                    # botocore sends a PUT again when its answer was lost (a reset, a 5xx after
                    # the write), and S3 refuses the copy: the write may have been this one.
                    # Every index and manifest differs from all others (a revision, a time).
                    written = self._get(key)
                    if written is not None and written[0] == data:
                        return True
                    if exc.response.get("ResponseMetadata", {}).get("RetryAttempts"):
                        # ...and another writer may have moved it on since: nobody can tell.
                        raise S3OutcomeUnknownError(
                            f"a write to s3://{self.bucket} key {key} was retried and refused: "
                            "the first try may have been applied; read the history before "
                            "trying again"
                        ) from None
                    return False
                raise
        return True

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, source: Path) -> None:
        # A managed upload (multipart for large files): S3 makes the object visible only whole.
        with self._errors(key):
            try:
                self._s3.upload_file(str(source), self.bucket, self._key(key))
            except S3UploadFailedError as exc:
                # boto3 wraps the request's ClientError in this: read as any other S3 failure
                # (it escaped as a traceback, and stopped `push --all` at the first model).
                if isinstance(exc.__context__, ClientError):
                    raise exc.__context__ from None
                raise S3Error(f"upload to s3://{self.bucket} key {key} failed: {exc}") from None

    # ------------------------------------------------------------------ cache
    def local_path(self, key: str, size: int | None = None) -> Path:
        """The object in the local cache, downloaded again unless the cached copy is current;
        with `size`, refused (ArtefactSizeError) before any download when it is another size."""
        remote = self._key(key)
        with self._errors(key):
            try:
                head = self._s3.head_object(Bucket=self.bucket, Key=remote)
            except ClientError as exc:
                if _code(exc) in _MISSING:
                    raise FileNotFoundError(key) from None
                raise
        if size is not None and head.get("ContentLength") != size:
            raise ArtefactSizeError(f"{self.url}/{key}", size, int(head.get("ContentLength", -1)))
        etag = str(head["ETag"])
        path = self._cache.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = path.with_name(path.name + ".etag.json")
        with FileLock(str(path) + ".lock", timeout=300):
            if self._cached_copy_is_current(path, meta, etag):
                return path
            digest = self._download(remote, path, etag)
            meta.write_text(json.dumps({"etag": etag, "sha256": digest}), encoding="utf-8")
        return path

    def forget_local_copy(self, key: str) -> None:
        """Delete the cached copy of an object (and its ETag record), if there is one."""
        path = self._cache.joinpath(*check_key(key).split("/"))
        if not path.parent.is_dir():
            return
        with FileLock(str(path) + ".lock", timeout=300):
            path.with_name(path.name + ".etag.json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)

    @staticmethod
    def _cached_copy_is_current(path: Path, meta: Path, etag: str) -> bool:
        try:
            recorded = json.loads(meta.read_text(encoding="utf-8"))
            return bool(recorded["etag"] == etag and sha256_file(path) == recorded["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _download(self, remote: str, path: Path, etag: str) -> str:
        # Under the key's lock (local_path): any earlier download's file is a killed process's
        # (SIGKILL, a deadline, an eviction skip the cleanup below), left to fill the cache.
        # mkstemp's names: the prefix, 8 random characters, the suffix (not another key's).
        for stale in path.parent.glob(f".{glob.escape(path.name)}.????????.tmp"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, self._errors(remote):
                try:
                    # IfMatch: the bytes must be the version whose ETag was just read.
                    response = self._s3.get_object(Bucket=self.bucket, Key=remote, IfMatch=etag)
                except ClientError as exc:
                    if _code(exc) in _MISSING | _LOST_RACE:
                        raise FileNotFoundError(remote) from None
                    raise
                body = response["Body"]
                try:
                    while chunk := body.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                finally:
                    body.close()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    # ------------------------------------------------------------------ errors
    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn botocore's failures into one-line RegistryErrors that name the bucket."""
        where = f"s3://{self.bucket}"
        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            if code == "NoSuchBucket":
                raise S3BucketNotFoundError(f"S3 bucket {self.bucket!r} does not exist") from None
            if code in _DENIED:
                raise S3AccessDeniedError(
                    f"access denied to {where} ({code}); check the AWS credentials and policy"
                ) from None
            message = exc.response.get("Error", {}).get("Message") or code
            raise S3Error(f"S3 request for {where} key {key} failed: {message}") from None
        except NoCredentialsError:
            raise S3AccessDeniedError(
                f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "or AWS_PROFILE"
            ) from None
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            reason = _without_userinfo(str(exc))
            message = f"cannot reach the S3 endpoint for {where}: {reason}"
            raise S3UnreachableError(message) from None
        except BotoCoreError as exc:
            reason = _without_userinfo(str(exc))
            raise S3Error(f"S3 request for {where} failed: {reason}") from None


# botocore quotes the endpoint URL whole: user:password@ in it must not reach logs.
_USERINFO = re.compile(r"(?<=://)[^/@\s\"']+@")


def _without_userinfo(text: str) -> str:
    return _USERINFO.sub("***@", text)


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code")
    if code:
        return str(code)
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
