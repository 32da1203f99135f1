"""Whose failed authentications count together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.middleware.auth import APIKeyMiddleware, _tokens, failure_bucket
from app.middleware.ratelimit import RateLimitMiddleware
from app.production import APIKeyAuth, RateLimiter, TokenBucketLimiter
from app.production.keystore import FileKeyStore


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client on a dual-stack socket
        ("unknown", "unknown"),
    ],
)
def test_an_ipv4_address_counts_alone_and_an_ipv6_one_with_its_64(
    address: str, bucket: str
) -> None:
    assert failure_bucket(address) == bucket


def test_an_address_is_parsed_once_while_it_keeps_coming() -> None:
    failure_bucket.cache_clear()
    for _ in range(3):
        assert failure_bucket("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert failure_bucket.cache_info().misses == 1


def no_bootstrap(token: str) -> bool:
    return False


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([(b"x-api-key", b"fw_key \t")], "fw_key"),  # httptools keeps trailing whitespace
        ([(b"authorization", b"Bearer fw_key ")], "fw_key"),
        ([(b"x-api-key", b" "), (b"authorization", b"Bearer fw_key")], "fw_key"),
        ([(b"x-api-key", b"fw_key "), (b"authorization", b"Bearer fw_key")], "fw_key"),  # one
    ],
)
def test_whitespace_around_a_key_is_not_part_of_it(
    headers: list[tuple[bytes, bytes]], token: str
) -> None:
    assert _tokens({"headers": headers}, no_bootstrap) == [token]


OTHER_LINES = [(b"host", b"example"), (b"x-api-keys", b"fw_no"), (b"authorizations", b"fw_no")]


@pytest.mark.parametrize(
    ("headers", "tokens"),
    [
        ([*OTHER_LINES, (b"x-api-key", b"fw_a"), *OTHER_LINES], ["fw_a"]),
        ([(b"x-api-key", b"fw_b"), *OTHER_LINES, (b"x-api-key", b"fw_a")], ["fw_b", "fw_a"]),
        ([(b"authorization", b"Bearer jwt"), *OTHER_LINES, (b"x-api-key", b"fw_a")], ["fw_a"]),
        ([*OTHER_LINES, [b"authorization", b"Bearer fw_a"]], ["fw_a"]),  # lists are pairs too
        (OTHER_LINES, []),
    ],
)
def test_only_the_key_lines_are_read_among_the_others_in_order(
    headers: list[tuple[bytes, bytes]], tokens: list[str]
) -> None:
    assert _tokens({"headers": headers}, no_bootstrap) == tokens


def test_without_auth_the_rate_limit_counts_an_ipv6_64_as_one_client() -> None:
    """Counted per address, each of a host's 2**64 addresses had a budget of its own."""
    app = RateLimitMiddleware(
        _ok, limiter=RateLimiter(2, 60), default_limit="2/minute", exempt_paths=frozenset()
    )
    statuses = [asyncio.run(_status(app, f"2001:db8:1:2::{n}")) for n in range(1, 5)]
    assert statuses == [200, 200, 429, 429]
    assert asyncio.run(_status(app, "2001:db8:1:3::1")) == 200  # another /64


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _status(app: ASGIApp, client: str) -> int:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/infer",
        "headers": [],
        "client": (client, 1),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


def test_a_403_still_names_the_key_for_the_access_log(tmp_path: Path) -> None:
    """The key is valid, only its scope is wrong: the access line said principal null."""
    auth = APIKeyAuth(store=FileKeyStore(tmp_path / "keys.json"), pepper="p" * 32)
    key = auth.create_key("alice", scopes=("admin",))
    scope: Scope = {
        "type": "http",
        "path": "/infer",
        "headers": [(b"x-api-key", key.encode())],
        "client": ("127.0.0.1", 5000),
        "state": {},
    }
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def never(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a 403 never reaches the app")

    middleware = APIKeyMiddleware(
        never,
        auth=auth,
        public_paths=frozenset(),
        failures=TokenBucketLimiter(capacity=5, refill_rate=1.0),
    )
    asyncio.run(middleware(scope, receive_nothing, send))
    assert sent[0]["status"] == 403
    assert scope["state"]["principal"].owner == "alice"


async def receive_nothing() -> Message:
    raise AssertionError("a 403 reads no body")
