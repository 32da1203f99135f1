"""APIKeyAuth with the file stores: format, hashing, verification, revocation, pepper."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import stat
import threading
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.production import APIKeyAuth, AuthFailure, Principal
from app.production.key_records import KeyRecord, dump_records
from app.production.keys import KeyStoreUnavailableError, resolve_pepper
from app.production.keystore import (
    FileKeyStore,
    HashedFileKeyStore,
    KeyFileError,
    ReadOnlyKeyStoreError,
)

PEPPER = "p" * 32


@pytest.fixture
def store(tmp_path: Path) -> FileKeyStore:
    return FileKeyStore(tmp_path / "keys" / "api-keys.json", refresh_s=0)


@pytest.fixture
def auth(store: FileKeyStore) -> APIKeyAuth:
    return APIKeyAuth(store=store, pepper=PEPPER)


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"api_keys_file": tmp_path / "home" / "api-keys.json"}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_a_key_is_prefix_public_id_and_a_256_bit_secret(auth: APIKeyAuth) -> None:
    key = auth.create_key("alice")
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "fw"
    assert len(key_id) == 16 and all(c in "0123456789abcdef" for c in key_id)
    assert len(secret) >= 43  # token_urlsafe(32)


def test_only_the_peppered_hmac_of_the_secret_is_stored(
    auth: APIKeyAuth, store: FileKeyStore
) -> None:
    key = auth.create_key("alice", prefix="acme")
    _, key_id, secret = key.split("_", 2)
    text = store.path.read_text()
    assert secret not in text
    record = store.get(key_id)
    assert record is not None
    assert record.hash == hmac.new(PEPPER.encode(), secret.encode(), hashlib.sha256).hexdigest()


def test_the_key_file_is_private_to_its_owner_and_written_without_leftovers(
    auth: APIKeyAuth, store: FileKeyStore
) -> None:
    auth.create_key("alice")
    auth.create_key("bob")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in store.path.parent.iterdir()) == [
        "api-keys.json",
        "api-keys.json.lock",
    ]


def test_the_store_makes_a_missing_key_directory_private(tmp_path: Path) -> None:
    """FileLock made it first, with the umask's 0755."""
    store = FileKeyStore(tmp_path / "fresh" / "keys" / "api-keys.json", refresh_s=0)
    APIKeyAuth(store=store, pepper=PEPPER).create_key("alice")
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize("emptied", ["", " \n"])
def test_an_emptied_key_file_keeps_the_last_good_keys_and_is_an_error_to_the_cli(
    auth: APIKeyAuth, store: FileKeyStore, caplog: pytest.LogCaptureFixture, emptied: str
) -> None:
    """An empty file (a truncating copy, an empty Secret) read as "no keys": every client was
    refused and `keys list` said "(no keys)"."""
    key = auth.create_key("alice")
    store.path.write_text(emptied)
    assert auth.verify_key(key) and auth.verify_key(key)
    said = [r for r in caplog.records if "cannot read key file" in r.getMessage()]
    assert len(said) == 1  # once for this file, not at every refresh
    with pytest.raises(KeyFileError, match="empty"):
        auth.list_keys()
    store.path.unlink()  # no file at all: no keys
    assert not auth.verify_key(key) and auth.list_keys() == []


@pytest.mark.parametrize("token", [None, "", "   ", "garbage", "fw_nothex_abc", 42, "x" * 5000])
def test_missing_or_garbage_keys_are_refused_without_raising(
    auth: APIKeyAuth, token: object
) -> None:
    assert auth.verify_key(token) is False  # type: ignore[arg-type]


def test_a_created_key_verifies_and_belongs_to_its_owner(auth: APIKeyAuth) -> None:
    key = auth.create_key("alice")
    assert auth.verify_key(key)
    assert auth.verify_key(key, user_id="alice")
    assert not auth.verify_key(key, user_id="bob")


def test_verifying_without_a_user_looks_up_one_id_and_never_scans(store: FileKeyStore) -> None:
    class NoScanStore(FileKeyStore):
        def records(self) -> list[KeyRecord]:
            raise AssertionError("scanned every key")

    scanning = NoScanStore(store.path, refresh_s=0)
    auth = APIKeyAuth(store=scanning, pepper=PEPPER)
    key = auth.create_key("alice")
    assert auth.verify_key(key, user_id=None)
    assert not auth.verify_key(key, user_id="")  # "" is an owner, not a wildcard


@pytest.mark.parametrize("user_id", ["", "alice ", "ALICE"])
def test_only_none_skips_the_owner_check(auth: APIKeyAuth, user_id: str) -> None:
    # A falsy user_id once meant "any user" (and scanned every user's keys).
    key = auth.create_key("alice")
    assert auth.verify_key(key)
    assert auth.verify_key(key, user_id="alice")
    assert auth.verify_key(key, user_id=user_id) is False


def test_secrets_are_compared_in_constant_time(
    auth: APIKeyAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = auth.create_key("alice")
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert auth.verify_key(key)
    assert not auth.verify_key(key[:-1] + ("A" if key[-1] != "A" else "B"))
    assert len(calls) == 2


def test_authenticate_names_the_reason_for_each_refusal(
    auth: APIKeyAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = auth.create_key("alice", scopes=("infer", "admin"), rate_limit="1000/minute")
    revoked = auth.create_key("alice")
    auth.revoke_key(revoked, "alice")
    expiring = auth.create_key("alice", expires_in=60)
    _, key_id, secret = good.split("_", 2)
    unknown = f"fw_{'0' * 16}_{secret}"
    bad_secret = f"fw_{key_id}_{'A' * 43}"

    async def reasons() -> list[object]:
        tokens = [None, "", "fw_x", unknown, bad_secret, revoked]
        return [await auth.authenticate(t) for t in tokens]

    assert asyncio.run(reasons()) == [
        AuthFailure("missing"),
        AuthFailure("missing"),
        AuthFailure("malformed"),
        AuthFailure("unknown"),
        AuthFailure("bad_secret"),
        AuthFailure("revoked"),
    ]
    principal = asyncio.run(auth.authenticate(good))
    assert principal == Principal(key_id, "alice", ("infer", "admin"), "1000/minute")
    assert isinstance(principal, Principal) and principal.has_scope("admin")
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert asyncio.run(auth.authenticate(expiring)) == AuthFailure("expired")


def test_revoke_key_needs_the_owner_and_revoke_id_needs_only_the_id(auth: APIKeyAuth) -> None:
    key = auth.create_key("alice")
    assert not auth.revoke_key(key, "mallory")
    assert not auth.revoke_key("garbage", "alice")
    assert auth.verify_key(key)
    assert auth.revoke_key(key, "alice")
    assert not auth.verify_key(key)
    other = auth.create_key("bob")
    assert auth.revoke_id(other.split("_")[1])
    assert not auth.verify_key(other)
    assert not auth.revoke_id("0" * 16)


def test_list_keys_shows_records_without_secrets(auth: APIKeyAuth) -> None:
    keys = [auth.create_key(owner) for owner in ("alice", "bob")]
    listed = auth.list_keys()
    assert [r.owner for r in listed] == ["alice", "bob"]
    assert all(
        key.split("_", 2)[2] not in json.dumps(r.to_dict())
        for r, key in zip(listed, keys, strict=True)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user_id": ""},
        {"user_id": "a", "prefix": "Bad_Prefix"},
        {"user_id": "a", "scopes": ("root",)},
        {"user_id": "a", "scopes": ()},
        {"user_id": "a", "expires_in": 0},
        {"user_id": "a", "expires_in": float("nan")},
        {"user_id": "a", "expires_in": float("inf")},
        {"user_id": "a", "expires_in": 36_501 * 86_400},
        {"user_id": "a", "expires_in": 1e300},
        {"user_id": "a", "rate_limit": "lots"},
    ],
)
def test_create_key_refuses_bad_arguments(auth: APIKeyAuth, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        auth.create_key(**kwargs)  # type: ignore[arg-type]


def test_keys_created_from_many_threads_are_all_kept(auth: APIKeyAuth) -> None:
    created: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(5):
            key = auth.create_key(f"user-{n}-{i}")
            with lock:
                created.append(key)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(auth.list_keys()) == 40
    assert all(auth.verify_key(key) for key in created)


def test_the_bootstrap_key_is_an_admin_principal(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, bootstrap_api_key=SecretStr("boot-" + "b" * 40))
    auth = APIKeyAuth(settings=settings, pepper=PEPPER)
    principal = asyncio.run(auth.authenticate("boot-" + "b" * 40))
    assert principal == Principal("bootstrap", "bootstrap", ("infer", "admin"))
    assert auth.verify_key("boot-" + "b" * 40, user_id="bootstrap")
    assert not auth.verify_key("boot-" + "b" * 39)


def test_the_zero_argument_form_uses_the_configured_store_not_a_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRAMEWORM_API_KEYS_FILE", str(tmp_path / "shared.json"))
    monkeypatch.setenv("FRAMEWORM_API_KEY_PEPPER", PEPPER)
    key = APIKeyAuth().create_key("alice")
    assert APIKeyAuth().verify_key(key)
    assert (tmp_path / "shared.json").exists()


def test_development_generates_a_private_pepper_beside_the_keys_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(tmp_path)
    caplog.set_level(logging.WARNING, logger="app.production.keys")
    first = APIKeyAuth(settings=settings)
    key = first.create_key("alice")
    pepper = tmp_path / "home" / "pepper"
    assert stat.S_IMODE(pepper.stat().st_mode) == 0o600
    assert len([r for r in caplog.records if "generated" in r.getMessage()]) == 1
    assert APIKeyAuth(settings=settings).verify_key(key)
    assert resolve_pepper(settings) == pepper.read_bytes()


def test_processes_starting_together_agree_on_one_whole_pepper(tmp_path: Path) -> None:
    # Each caller writes its pepper under a temporary name and links it into place, so a
    # loser of the race reads the winner's complete pepper, never an empty or partial file.
    settings = settings_for(tmp_path)
    start = threading.Barrier(8)
    seen: list[bytes] = []

    def resolve() -> None:
        start.wait()
        seen.append(resolve_pepper(settings))

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pepper = tmp_path / "home" / "pepper"
    assert set(seen) == {pepper.read_bytes()}
    assert len(pepper.read_bytes()) >= 32
    assert sorted(p.name for p in pepper.parent.iterdir() if p.name.startswith(".pepper")) == []


def test_production_refuses_to_run_without_a_configured_pepper(tmp_path: Path) -> None:
    unsafe = Settings.model_construct(env="production", api_key_pepper=None)
    with pytest.raises(ValueError, match="pepper"):
        resolve_pepper(unsafe)
    with pytest.raises(ValueError, match="pepper"):
        APIKeyAuth(store=FileKeyStore(tmp_path / "k.json"), settings=unsafe)
    with pytest.raises(ValueError):
        APIKeyAuth(store=FileKeyStore(tmp_path / "k.json"), pepper=b"")


def test_a_configured_pepper_is_used_as_given(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, api_key_pepper=SecretStr(PEPPER))
    key = APIKeyAuth(settings=settings).create_key("alice")
    assert APIKeyAuth(store=FileKeyStore(settings.api_keys_file), pepper=PEPPER).verify_key(key)
    assert not (tmp_path / "home" / "pepper").exists()


def test_the_store_is_chosen_by_settings(tmp_path: Path) -> None:
    hashed = APIKeyAuth(settings=settings_for(tmp_path, api_key_store="hashed-file"), pepper=PEPPER)
    assert isinstance(hashed.store, HashedFileKeyStore)
    with pytest.raises(ReadOnlyKeyStoreError):
        hashed.create_key("alice")
    with pytest.raises(ValueError, match="REDIS_URL"):
        APIKeyAuth(settings=settings_for(tmp_path, api_key_store="redis"), pepper=PEPPER)


def test_the_mounted_read_only_store_reads_the_same_format_the_file_store_writes(
    auth: APIKeyAuth, store: FileKeyStore, tmp_path: Path
) -> None:
    key = auth.create_key("alice")
    mounted = tmp_path / "secret" / "keys.json"
    mounted.parent.mkdir()
    mounted.write_text(dump_records(store.records()))
    reader = APIKeyAuth(store=HashedFileKeyStore(mounted), pepper=PEPPER)
    assert reader.verify_key(key, user_id="alice")
    with pytest.raises(ReadOnlyKeyStoreError):
        reader.revoke_id(key.split("_")[1])


def test_a_reader_sees_another_writers_changes_after_its_refresh_interval(
    auth: APIKeyAuth, store: FileKeyStore
) -> None:
    reader_store = FileKeyStore(store.path, refresh_s=3600)
    reader = APIKeyAuth(store=reader_store, pepper=PEPPER)
    assert reader.verify_key("fw_0000000000000000_" + "A" * 43) is False  # primes the cache
    key = auth.create_key("alice")
    assert reader.verify_key(key) is False  # within the interval: the file is not re-read
    reader_store.refresh_s = 0
    assert reader.verify_key(key) is True


@pytest.mark.parametrize("kind", [HashedFileKeyStore, FileKeyStore])
def test_a_deleted_key_file_takes_its_keys_away(
    auth: APIKeyAuth, store: FileKeyStore, kind: type[HashedFileKeyStore]
) -> None:
    """Only a missing file means no keys: a deleted one was taken for "the same unreadable
    file" (both signatures None), and a running server kept every key it had read."""
    key = auth.create_key("alice")
    reader = APIKeyAuth(store=kind(store.path, refresh_s=0), pepper=PEPPER)
    assert reader.verify_key(key)
    store.path.unlink()
    assert not reader.verify_key(key)


def test_a_key_file_that_cannot_be_looked_at_keeps_the_last_good_keys(
    auth: APIKeyAuth, store: FileKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A stat error other than a missing file (a directory replaced or made unreadable)
    escaped the store: every keyed request was 503 instead of served with the last keys."""
    key = auth.create_key("alice")
    folder = store.path.parent
    folder.rename(folder.with_name("moved"))
    folder.write_text("not a directory")  # the key file's stat: NotADirectoryError
    assert auth.verify_key(key) and auth.verify_key(key)
    said = [r for r in caplog.records if "cannot read key file" in r.getMessage()]
    assert len(said) == 1
    with pytest.raises(KeyFileError):
        auth.list_keys()


@pytest.mark.parametrize(
    "corrupt",
    # Deeply nested: json.loads raised RecursionError, which no handler caught (503s for all).
    [
        "{not json",
        '{"version": 1, "keys": ' + "[" * 100_000 + "]" * 100_000 + "}",
        # JSON's NaN (json.loads reads it) compares false with every time: it never expired.
        '{"version": 1, "keys": [{"id": "0123456789abcdef", "owner": "a", "created": 1, '
        '"hash": "h", "expires": NaN}]}',
        # compare_digest raises TypeError for non-ASCII text: a 500 for that key id.
        '{"version": 1, "keys": [{"id": "0123456789abcdef", "owner": "a", "created": 1, '
        '"hash": "\u00e9"}]}',
        # Past float's range: OverflowError escaped every lookup.
        '{"version": 1, "keys": [{"id": "0123456789abcdef", "owner": "a", "created": 1, '
        '"hash": "h", "expires": 1' + "0" * 400 + "}]}",
    ],
)
def test_a_corrupt_key_file_keeps_the_last_good_keys_and_is_an_error_to_the_cli(
    auth: APIKeyAuth, store: FileKeyStore, caplog: pytest.LogCaptureFixture, corrupt: str
) -> None:
    key = auth.create_key("alice")
    store.path.write_text(corrupt)
    assert auth.verify_key(key)
    assert any("cannot read key file" in r.getMessage() for r in caplog.records)
    with pytest.raises(KeyFileError):
        auth.list_keys()


@pytest.mark.parametrize(
    "rate_limit", ["1000/min", 1000, ["10/minute"], "2/second;3/minute", "0/minute"]
)
def test_a_key_whose_limit_cannot_be_applied_is_refused_and_the_others_still_work(
    auth: APIKeyAuth, store: FileKeyStore, caplog: pytest.LogCaptureFixture, rate_limit: object
) -> None:
    """A hand-edited limit (or one an earlier version accepted) made every request with that
    key a bare 500: the limiter raised outside every error handler. That key alone is now
    refused, logged with its id; the record stays, to be listed, fixed or revoked."""
    bad = auth.create_key("alice", rate_limit="10/minute")
    good = auth.create_key("bob", rate_limit="10/minute")
    document = json.loads(store.path.read_text())
    bad_record = next(r for r in document["keys"] if r["owner"] == "alice")
    bad_record["rate_limit"] = rate_limit
    store.path.write_text(json.dumps(document))

    assert asyncio.run(auth.authenticate(bad)) == AuthFailure("invalid_limit")
    assert isinstance(asyncio.run(auth.authenticate(good)), Principal)
    assert any(bad_record["id"] in r.getMessage() for r in caplog.records)
    assert {r.owner for r in auth.list_keys()} == {"alice", "bob"}
    assert auth.revoke_id(bad_record["id"])


def test_a_corrupt_key_file_is_never_overwritten_by_a_fresh_process(
    auth: APIKeyAuth, store: FileKeyStore
) -> None:
    alice = auth.create_key("alice")
    auth.create_key("bob")
    store.path.write_text(store.path.read_text().replace('"keys": [', '"keys": [,'))
    corrupt = store.path.read_bytes()
    # A new process (the CLI) has no last good set to fall back on: it must refuse.
    fresh = APIKeyAuth(store=FileKeyStore(store.path, refresh_s=0), pepper=PEPPER)
    with pytest.raises(KeyFileError, match="cannot read key file"):
        fresh.create_key("carol")
    with pytest.raises(KeyFileError):
        fresh.revoke_id(alice.split("_")[1])
    with pytest.raises(KeyFileError):
        fresh.list_keys()
    # A long-running writer refuses too, rather than writing back its cached set.
    with pytest.raises(KeyFileError):
        auth.create_key("carol")
    assert store.path.read_bytes() == corrupt


def test_an_unreadable_store_is_a_503_for_authenticate_and_false_for_verify(
    tmp_path: Path,
) -> None:
    class BrokenStore(HashedFileKeyStore):
        def get(self, key_id: str) -> KeyRecord | None:
            raise ConnectionError("down")

        async def aget(self, key_id: str) -> KeyRecord | None:
            raise ConnectionError("down")

    auth = APIKeyAuth(store=BrokenStore(tmp_path / "x.json"), pepper=PEPPER)
    token = "fw_0123456789abcdef_" + "A" * 43
    assert auth.verify_key(token) is False
    with pytest.raises(KeyStoreUnavailableError):
        asyncio.run(auth.authenticate(token))


def test_a_key_seen_again_skips_the_hmac_while_its_record_is_unchanged(
    auth: APIKeyAuth, store: FileKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = auth.create_key("alice", expires_in=60)
    other = auth.create_key("bob")
    hashed: list[str] = []
    real_hash = auth._hash

    def spy(secret: str) -> str:
        hashed.append(secret)
        return real_hash(secret)

    monkeypatch.setattr(auth, "_hash", spy)

    async def twice(token: str) -> list[Principal | AuthFailure]:
        return [await auth.authenticate(token), await auth.authenticate(token)]

    secret = key.split("_", 2)[2]
    first, second = asyncio.run(twice(key))
    assert isinstance(first, Principal) and second == first
    assert hashed == [secret]  # the second request is the remembered principal
    # Another key added rewrites the file: records are new objects, equal ones still match.
    auth.create_key("carol")
    assert asyncio.run(auth.authenticate(key)) == first and hashed.count(secret) == 1
    # A wrong secret for the same id is never a remembered token: it is hashed every time.
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert asyncio.run(twice(wrong)) == [AuthFailure("bad_secret")] * 2
    assert hashed.count(wrong.split("_", 2)[2]) == 2
    # Revoked (another process wrote the file): judged afresh at once.
    assert isinstance(asyncio.run(auth.authenticate(other)), Principal)
    FileKeyStore(store.path).revoke(other.split("_")[1], time.time())
    assert asyncio.run(auth.authenticate(other)) == AuthFailure("revoked")
    # Expired while remembered.
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    assert asyncio.run(auth.authenticate(key)) == AuthFailure("expired")


def test_a_remembered_key_is_refused_once_its_record_changes(
    auth: APIKeyAuth, store: FileKeyStore
) -> None:
    key = auth.create_key("alice")
    key_id = key.split("_")[1]
    assert isinstance(asyncio.run(auth.authenticate(key)), Principal)
    document = json.loads(store.path.read_text())
    document["keys"][0]["hash"] = "0" * 64  # the secret rotated by hand
    store.path.write_text(json.dumps(document))
    assert asyncio.run(auth.authenticate(key)) == AuthFailure("bad_secret")
    store.path.write_text(json.dumps({"version": 1, "keys": []}))
    assert asyncio.run(auth.authenticate(key)) == AuthFailure("unknown")
    assert key_id not in {r.id for r in auth.list_keys()}


def test_remembered_keys_are_bounded(auth: APIKeyAuth, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.production.keys._MAX_VERIFIED", 2)
    keys = [auth.create_key(f"user{i}") for i in range(5)]

    async def all_keys() -> list[Principal | AuthFailure]:
        return [await auth.authenticate(k) for k in keys]

    assert all(isinstance(p, Principal) for p in asyncio.run(all_keys()))
    assert len(auth._verified) <= 2


def test_prefix_variants_of_one_key_are_one_remembered_entry(
    auth: APIKeyAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prefix names no record, so `xaaa_<id>_<secret>`, `xaab_...` all pass: remembered by
    the whole token, one key holder could churn every other key out of the cache."""
    monkeypatch.setattr("app.production.keys._MAX_VERIFIED", 4)
    victim, attacker = auth.create_key("victim"), auth.create_key("attacker")
    rest = attacker.split("_", 1)[1]
    variants = [f"x{chr(97 + i // 26)}{chr(97 + i % 26)}_{rest}" for i in range(50)]

    async def run() -> list[Principal | AuthFailure]:
        return [await auth.authenticate(t) for t in [victim, *variants]]

    assert all(isinstance(p, Principal) for p in asyncio.run(run()))
    assert len(auth._verified) == 2  # the victim's entry was never pushed out
    assert asyncio.run(auth.authenticate("FW_" + rest)) == AuthFailure("malformed")
