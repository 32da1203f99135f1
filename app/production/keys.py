"""API keys: `fw_<id>_<secret>`, stored as HMAC-SHA256(pepper, secret), looked up by id.

The id (16 hex characters) is public and names the record; the secret (`token_urlsafe(32)`,
256 bits) is shown once at creation and never stored. Verification costs one store lookup and
one HMAC compared in constant time, whatever the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from app.config import Settings

from .key_records import SCOPES, KeyRecord
from .keystore import (
    FileKeyStore,
    HashedFileKeyStore,
    KeyStore,
    RedisKeyStore,
)
from .ratelimit import parse_limit

logger = logging.getLogger(__name__)

FailureReason = Literal[
    "missing",
    "malformed",
    "unknown",
    "bad_secret",
    "revoked",
    "expired",
    "invalid_limit",
    "ambiguous",  # two different keys in one request (app.middleware.auth)
]
PREFIX_PATTERN = r"[a-z][a-z0-9]{0,15}"  # a key's `fw` in fw_<id>_<secret>
_PREFIX = re.compile(PREFIX_PATTERN)
_KEY = re.compile(rf"({PREFIX_PATTERN})_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{32,128}})")
_MAX_TOKEN = 1024
_MAX_VERIFIED = 4096  # tokens remembered as valid; emptied when full
# A longer expiry is a typo, and past year 9999 no datetime can show it: one such record made
# every listing of the keys fail.
MAX_EXPIRES_IN_S = 36_500 * 86_400  # 100 years
BOOTSTRAP_OWNER = "bootstrap"


def _remembered_as(token: object) -> str | None:
    """A token's entry among the verified ones: without its prefix, which names no record
    (`fw_`, `xy_`: one key, one entry, so a key holder cannot churn the others out)."""
    if not isinstance(token, str):
        return None
    prefix, sep, rest = token.partition("_")
    return rest if sep and _PREFIX.fullmatch(prefix) else None


class KeyStoreUnavailableError(RuntimeError):
    """The key store could not be read; the server answers 503, not 401."""


@dataclass(frozen=True)
class Principal:
    """Who a valid key belongs to and what it may do."""

    key_id: str
    owner: str
    scopes: tuple[str, ...]
    rate_limit: str | None = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class AuthFailure:
    """Why a token was refused (for metrics and logs; clients all get the same 401)."""

    reason: FailureReason


def build_key_store(settings: Settings) -> KeyStore:
    """The store `Settings.api_key_store` names."""
    if settings.api_key_store == "file":
        return FileKeyStore(settings.api_keys_file)
    if settings.api_key_store == "hashed-file":
        return HashedFileKeyStore(settings.api_keys_file)
    if settings.redis_url is None:
        raise ValueError("FRAMEWORM_API_KEY_STORE=redis needs FRAMEWORM_REDIS_URL")
    return RedisKeyStore(settings.redis_url.get_secret_value())


def resolve_pepper(settings: Settings, store: KeyStore | None = None) -> bytes:
    """The configured pepper; in development only, one generated and kept beside the keys,
    while `store` (by default the one `settings` names) holds no keys yet."""
    if settings.api_key_pepper is not None:
        return settings.api_key_pepper.get_secret_value().encode("utf-8")
    if settings.env != "development":
        raise ValueError("no API key pepper: set FRAMEWORM_API_KEY_PEPPER_FILE from a secret")
    path = Path(settings.api_keys_file).parent / "pepper"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        return path.read_bytes().strip()
    if (build_key_store(settings) if store is None else store).records():
        # Its keys were hashed with another pepper (the server's, say): a new one would make
        # keys that never authenticate, and leave it here for every later run.
        raise ValueError(
            f"the key store holds keys but there is no pepper at {path}: set "
            "FRAMEWORM_API_KEY_PEPPER (or _FILE) to the pepper they were made with"
        )
    pepper = secrets.token_urlsafe(32)
    # Written whole under a temporary name (mode 0600), then linked into place: the link fails
    # when another process starting at the same time got there first, so both agree on one
    # pepper, and neither ever reads a half-written one.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".pepper-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(pepper)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes().strip()
    finally:
        os.unlink(temporary)
    logger.warning("generated an API key pepper at %s (development only)", path)
    return pepper.encode("utf-8")


class APIKeyAuth:
    """Create, verify and revoke API keys. Thread-safe (the stores lock).

    With no arguments, the store and pepper come from `Settings()` (FRAMEWORM_* variables).
    `Settings.bootstrap_api_key`, when set, is also accepted, as owner "bootstrap" with the
    scopes infer and admin.
    """

    def __init__(
        self,
        store: KeyStore | None = None,
        pepper: bytes | str | None = None,
        settings: Settings | None = None,
    ) -> None:
        if store is None or pepper is None:
            if settings is None:
                settings = Settings()
            store = build_key_store(settings) if store is None else store
            pepper = resolve_pepper(settings, store) if pepper is None else pepper
        self._pepper = pepper.encode("utf-8") if isinstance(pepper, str) else bytes(pepper)
        if not self._pepper:
            raise ValueError("the API key pepper must not be empty")
        self.store: KeyStore = store
        secret = settings.bootstrap_api_key if settings is not None else None
        self._bootstrap = secret.get_secret_value().encode("utf-8") if secret else None
        # Compared against when the id is unknown, so both paths cost one HMAC.
        self._decoy = self._hash("decoy")
        # Tokens that passed, with the record they passed against: while the store still
        # holds an equal record (not revoked, not changed) and it has not expired, the same
        # token is the same principal, so the parse and the HMAC (a third of the auth layer's
        # cost a request) are skipped. Only valid tokens enter (a guesser cannot fill it), it
        # is bounded, one entry a key whatever its prefix, and it lives in this process's
        # memory, where every presented token passes anyway; only HMACs are written down.
        self._verified: dict[str, tuple[KeyRecord, Principal]] = {}

    def _hash(self, secret: str) -> str:
        return hmac.new(self._pepper, secret.encode("utf-8"), hashlib.sha256).hexdigest()

    # -- creation and revocation --------------------------------------------------------
    def create_key(
        self,
        user_id: str,
        prefix: str = "fw",
        scopes: tuple[str, ...] = ("infer",),
        expires_in: float | timedelta | None = None,
        rate_limit: str | None = None,
    ) -> str:
        """Make a key for `user_id` and return it in full; only its HMAC is kept."""
        if not isinstance(user_id, str) or not user_id.strip():
            raise ValueError("user_id must be a non-empty string")
        if not _PREFIX.fullmatch(prefix):
            raise ValueError("prefix must be 1-16 lowercase letters or digits, starting a letter")
        if not scopes or any(s not in SCOPES for s in scopes):
            raise ValueError(f"scopes must be a non-empty subset of {SCOPES}")
        if isinstance(expires_in, timedelta):
            expires_in = expires_in.total_seconds()
        if expires_in is not None and not 0 < expires_in <= MAX_EXPIRES_IN_S:
            # `not 0 < x`, so NaN is refused too.
            raise ValueError("expires_in must be positive and at most 100 years (36500d)")
        if rate_limit is not None:
            parse_limit(rate_limit)  # ValueError when malformed
        now = time.time()
        for _ in range(3):
            key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
            record = KeyRecord(
                id=key_id,
                owner=user_id,
                scopes=tuple(dict.fromkeys(scopes)),
                created=now,
                hash=self._hash(secret),
                expires=None if expires_in is None else now + expires_in,
                rate_limit=rate_limit,
            )
            try:
                self.store.add(record)
            except ValueError:  # a 64-bit id collision: draw again
                continue
            logger.info("created API key %s for %s", key_id, user_id)
            return f"{prefix}_{key_id}_{secret}"
        raise RuntimeError("could not draw an unused key id")

    def revoke_key(self, key: str, user_id: str) -> bool:
        """Revoke a key given in full, if it belongs to `user_id`. True when revoked."""
        parsed = self._parse(key)
        if not isinstance(parsed, tuple):
            return False
        key_id, secret = parsed
        record = self.store.get(key_id)
        if record is None or record.owner != user_id:
            return False
        if not hmac.compare_digest(self._hash(secret), record.hash):
            return False
        return self.revoke_id(key_id)

    def revoke_id(self, key_id: str) -> bool:
        """Revoke by public id (an admin operation). True when the id exists."""
        revoked = self.store.revoke(key_id, time.time())
        if revoked:
            logger.info("revoked API key %s", key_id)
        return revoked

    def list_keys(self) -> list[KeyRecord]:
        return self.store.records()

    # -- verification -------------------------------------------------------------------
    def verify_key(self, key: str | None, user_id: str | None = None) -> bool:
        """True for a valid key (of `user_id`, when given). Never raises."""
        parsed = self._parse(key)
        if isinstance(parsed, tuple):
            try:
                result = self._judge(self.store.get(parsed[0]), parsed[1])
            except Exception as exc:
                logger.error("key store lookup failed (%s)", type(exc).__name__)
                return False
        else:
            result = parsed
        if not isinstance(result, Principal):
            return False
        # Only None means "any owner": "" is a user id that owns no key, not a wildcard.
        return user_id is None or result.owner == user_id

    async def authenticate(self, token: str | None) -> Principal | AuthFailure:
        """The principal for a token, or why it was refused.

        Raises KeyStoreUnavailableError when the store cannot be read (a 503, not a 401).
        """
        remembered = _remembered_as(token)
        if remembered and (known := self._verified.get(remembered)) is not None:
            record = await self._lookup(known[1].key_id)
            if (record is known[0] or record == known[0]) and not known[0].is_expired():
                return known[1]
            self._verified.pop(remembered, None)  # revoked or changed: judged afresh
        parsed = self._parse(token)
        if not isinstance(parsed, tuple):
            return parsed
        key_id, secret = parsed
        record = await self._lookup(key_id)
        result = self._judge(record, secret)
        if record is not None and isinstance(result, Principal) and remembered:
            if len(self._verified) >= _MAX_VERIFIED:
                self._verified.clear()
            self._verified[remembered] = (record, result)
        return result

    async def _lookup(self, key_id: str) -> KeyRecord | None:
        try:
            return await self.store.aget(key_id)
        except Exception as exc:
            logger.error("key store lookup failed (%s)", type(exc).__name__)
            raise KeyStoreUnavailableError("the API key store is unavailable") from exc

    def is_bootstrap(self, token: str) -> bool:
        """Whether `token` is the configured bootstrap key (compared in constant time)."""
        return self._bootstrap is not None and hmac.compare_digest(
            token.encode("utf-8", "replace"), self._bootstrap
        )

    def _parse(self, token: object) -> tuple[str, str] | Principal | AuthFailure:
        if not isinstance(token, str) or not token.strip():
            return AuthFailure("missing")
        if len(token) > _MAX_TOKEN:
            return AuthFailure("malformed")
        if self.is_bootstrap(token):
            return Principal("bootstrap", BOOTSTRAP_OWNER, ("infer", "admin"))
        match = _KEY.fullmatch(token)
        if match is None:
            return AuthFailure("malformed")
        return match.group(2), match.group(3)

    def _judge(self, record: KeyRecord | None, secret: str) -> Principal | AuthFailure:
        digest = self._hash(secret)
        if record is None:
            hmac.compare_digest(digest, self._decoy)
            return AuthFailure("unknown")
        if not hmac.compare_digest(digest, record.hash):
            return AuthFailure("bad_secret")
        # State is only revealed to a holder of the secret.
        if record.revoked is not None:
            return AuthFailure("revoked")
        if record.is_expired():
            return AuthFailure("expired")
        if not record.has_usable_limit():
            # Refused rather than served without its limit (or a 500 on every request); the
            # other keys are unaffected, and the record stays to be fixed, listed or revoked.
            logger.error("API key %s has a rate limit that cannot be applied", record.id)
            return AuthFailure("invalid_limit")
        return Principal(record.id, record.owner, record.scopes, record.rate_limit)
