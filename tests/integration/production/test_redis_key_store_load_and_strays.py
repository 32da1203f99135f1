"""RedisKeyStore against a real redis-server: a burst beyond its pool, and values under its
prefix that are not key records."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from app.cli import cli
from app.production import APIKeyAuth, AuthFailure, Principal, RedisKeyStore
from tests.support.redis import RedisServer

PEPPER = "p" * 32
BURST = 300  # concurrent lookups: past redis-py's default cap (100) and the store's pool


def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    """The default async pool raised MaxConnectionsError past 100 connections: a 503
    "authentication is unavailable" for the rest of a burst, valid keys or made-up ones."""
    store = RedisKeyStore(redis_server.url, timeout_s=10)  # a loaded test machine is slow
    auth = APIKeyAuth(store=store, pepper=PEPPER)
    key = auth.create_key("alice")
    made_up = [f"fw_{i:016x}_{'s' * 43}" for i in range(BURST)]
    assert store.max_connections < BURST

    async def burst() -> list[Principal | AuthFailure]:
        try:
            results = await asyncio.gather(*(auth.authenticate(t) for t in [key] * BURST + made_up))
            with redis.Redis.from_url(redis_server.url) as client:  # before the pool closes
                clients = client.info("clients")["connected_clients"]
            # The pool's, the admin client's and this one's: the bound held.
            assert clients <= store.max_connections + 2
            return results
        finally:
            await store.aclose()

    results = asyncio.run(burst())
    assert results[:BURST] == [Principal(key.split("_")[1], "alice", ("infer",))] * BURST
    assert results[BURST:] == [AuthFailure("unknown")] * BURST


@pytest.fixture
def stray(redis_server: RedisServer) -> tuple[RedisKeyStore, str, str]:
    """A store holding alice's key and, under its prefix, a hash where a record would be."""
    store = RedisKeyStore(redis_server.url)
    key = APIKeyAuth(store=store, pepper=PEPPER).create_key("alice")
    stray_id = "00000000000000aa"
    client = redis.Redis.from_url(redis_server.url)
    client.hset(store.prefix + stray_id, "a", "b")
    client.close()
    return store, key, stray_id


def test_a_value_that_is_not_a_string_is_no_key_not_a_store_outage(
    stray: tuple[RedisKeyStore, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """GET answers WRONGTYPE for a hash: it was a 503 for that id, and failed every listing
    and revocation (so `frameworm serve`, which lists the keys, did not start)."""
    store, key, stray_id = stray
    auth = APIKeyAuth(store=store, pepper=PEPPER)

    async def authenticate() -> Principal | AuthFailure:
        try:
            return await auth.authenticate(f"fw_{stray_id}_{'s' * 43}")
        finally:
            await store.aclose()

    caplog.set_level(logging.ERROR, logger="app.production.keystore")
    assert asyncio.run(authenticate()) == AuthFailure("unknown")
    assert store.get(stray_id) is None
    assert [r.owner for r in auth.list_keys()] == ["alice"]
    assert not auth.revoke_id(stray_id)
    assert auth.verify_key(key)  # the real key is untouched
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4 and all(f"apikey:{stray_id}" in m for m in logged), logged
    assert all("WRONGTYPE" in m for m in logged)
    store.close()


def test_the_cli_lists_and_revokes_past_a_value_that_is_not_a_string(
    stray: tuple[RedisKeyStore, str, str],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    store, key, stray_id = stray
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("FRAMEWORM_API_KEY_STORE", "redis")
    monkeypatch.setenv("FRAMEWORM_REDIS_URL", redis_server.url)
    monkeypatch.setenv("FRAMEWORM_API_KEY_PEPPER", PEPPER)
    runner = CliRunner()
    listed = runner.invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert [line.split()[1] for line in listed.output.splitlines()] == ["alice"]
    revoked = runner.invoke(cli, ["keys", "revoke", stray_id])
    assert revoked.exit_code == 1 and revoked.output == f"error: no key with id {stray_id}\n"
    assert runner.invoke(cli, ["keys", "revoke", key.split("_")[1]]).exit_code == 0
    store.close()
