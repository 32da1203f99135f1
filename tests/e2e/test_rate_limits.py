"""Rate limits of running `frameworm serve` processes: exact counts, headers, shared budgets.

Five servers start together: one with in-memory counters; two sharing a real redis-server for
both the counters and the API keys; two pointed at a closed Redis port, one failing open and
one failing closed (auth off there: the limit then applies per client address).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import closed_port
from tests.support.hardened import (
    HardenedServer,
    model_work,
    starting_servers,
    v2_document,
    wait_all_ready,
)
from tests.support.redis import RedisServer, run_redis_server

LIMIT = 100
REQUESTS = 150
LIMITED_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@dataclass
class Servers:
    memory: HardenedServer
    shared: tuple[HardenedServer, HardenedServer]
    fail_open: HardenedServer
    fail_closed: HardenedServer
    redis: RedisServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root: Path = tmp_path_factory.mktemp("ratelimits")
    with run_redis_server(root / "redis") as redis, closed_port() as port:
        shared: dict[str, str | None] = {
            "FRAMEWORM_RATE_LIMIT_STORAGE": redis.url,
            "FRAMEWORM_API_KEY_STORE": "redis",
            "FRAMEWORM_REDIS_URL": redis.url,
        }
        closed = f"redis://127.0.0.1:{port}/0"
        unreachable: dict[str, str | None] = {
            "FRAMEWORM_AUTH_ENABLED": "false",
            "FRAMEWORM_RATE_LIMIT_STORAGE": closed,
        }
        configs: dict[str, dict[str, str | None]] = {
            "memory": {"FRAMEWORM_RATE_LIMIT": f"{LIMIT}/minute"},
            "redis-a": shared,
            "redis-b": shared,
            "fail-open": unreachable,
            "fail-closed": {**unreachable, "FRAMEWORM_RATE_LIMIT_FAIL_OPEN": "false"},
        }
        with starting_servers(root, configs) as running:
            wait_all_ready(running)
            yield Servers(
                running["memory"],
                (running["redis-a"], running["redis-b"]),
                running["fail-open"],
                running["fail-closed"],
                redis,
            )


async def burst(
    urls: Sequence[str], key: str | None, count: int, connections: int | None = None
) -> list[httpx.Response]:
    """`count` concurrent v2 infer requests, spread round-robin over `urls`."""
    headers = {"x-api-key": key} if key else {}
    limits = httpx.Limits(max_connections=connections or count)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        f"{urls[i % len(urls)]}/v2/models/cnn-digits/infer", json=v2_document()
                    )
                    for i in range(count)
                )
            )
        )


def assert_limited_headers(response: httpx.Response) -> None:
    for name in LIMITED_HEADERS:
        assert int(response.headers[name]) >= 0, (name, response.headers)


def test_150_concurrent_requests_from_one_key_give_exactly_100_successes_and_50_429s(
    servers: Servers,
) -> None:
    key = servers.memory.add_key("burst")
    responses = asyncio.run(burst([servers.memory.url], key, REQUESTS))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: LIMIT, 429: REQUESTS - LIMIT}
    for response in responses:
        assert_limited_headers(response)
        assert response.headers["ratelimit-limit"] == str(LIMIT)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "rate-limited"
            assert response.headers["ratelimit-remaining"] == "0"
    remaining = sorted(int(r.headers["ratelimit-remaining"]) for r in responses if r.is_success)
    assert remaining == list(range(LIMIT))


def test_a_429_does_no_model_work(servers: Servers) -> None:
    key = servers.memory.add_key("spent", rate_limit="1/minute")
    with httpx.Client(base_url=servers.memory.url, timeout=10) as client:
        headers = {"x-api-key": key}
        assert client.post("/v2/models/cnn-digits/infer", json=v2_document(), headers=headers)
        work = model_work(client)
        for _ in range(5):
            response = client.post(
                "/v2/models/cnn-digits/infer", json=v2_document(), headers=headers
            )
            assert response.status_code == 429
        assert model_work(client) == work


def test_a_per_key_limit_set_by_the_cli_overrides_the_default(servers: Servers) -> None:
    _, key = servers.memory.create_key("small", "--rate-limit", "5/minute")
    with httpx.Client(base_url=servers.memory.url, timeout=10) as client:
        responses = [
            client.get("/v2/models/cnn-digits", headers={"x-api-key": key}) for _ in range(7)
        ]
    assert [r.status_code for r in responses] == [200] * 5 + [429] * 2
    assert {r.headers["ratelimit-limit"] for r in responses} == {"5"}
    assert [r.headers["ratelimit-remaining"] for r in responses[:5]] == ["4", "3", "2", "1", "0"]


def test_probes_carry_no_rate_limit_and_are_never_limited(servers: Servers) -> None:
    with httpx.Client(base_url=servers.memory.url, timeout=10) as client:
        for path in ("/healthz", "/readyz", "/v2/health/ready"):
            response = client.get(path)
            assert response.status_code == 200
            assert "ratelimit-limit" not in response.headers


def test_two_servers_sharing_redis_share_one_budget(servers: Servers) -> None:
    first, second = servers.shared
    _, key = first.create_key("shared", "--rate-limit", f"{LIMIT}/minute")
    # At most 16 in flight: a larger burst outlasts the limiter's 0.25 s Redis timeout on a
    # loaded machine and fails open (see the report on app/production/ratelimit.py).
    responses = asyncio.run(burst([first.url, second.url], key, REQUESTS, connections=16))
    assert Counter(r.status_code for r in responses) == {200: LIMIT, 429: REQUESTS - LIMIT}
    by_server = Counter(str(r.url).split("/v2")[0] for r in responses if r.is_success)
    assert set(by_server) == {first.url, second.url}  # both servers did serve
    for response in responses:
        assert_limited_headers(response)


def test_a_key_revoked_through_the_cli_is_refused_at_once_by_both_servers(
    servers: Servers,
) -> None:
    first, second = servers.shared
    key_id, key = first.create_key("leaver")
    for server in servers.shared:
        response = httpx.get(f"{server.url}/v2/models/cnn-digits", headers={"x-api-key": key})
        assert response.status_code == 200, response.text
    revoked = second.keys("revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    for server in servers.shared:
        response = httpx.get(f"{server.url}/v2/models/cnn-digits", headers={"x-api-key": key})
        assert response.status_code == 401


def test_an_unreachable_redis_fails_open_when_so_configured(servers: Servers) -> None:
    with httpx.Client(base_url=servers.fail_open.url, timeout=10) as client:
        for _ in range(3):
            started = time.monotonic()
            response = client.post("/v2/models/cnn-digits/infer", json=v2_document())
            assert response.status_code == 200, response.text
            assert time.monotonic() - started < 2
            # Nothing was counted: no header claims a quota (it said the whole limit was left).
            assert not set(LIMITED_HEADERS) & set(response.headers)


def test_an_unreachable_redis_fails_closed_with_a_prompt_problem_when_so_configured(
    servers: Servers,
) -> None:
    with httpx.Client(base_url=servers.fail_closed.url, timeout=10) as client:
        work = model_work(client)
        for _ in range(3):
            started = time.monotonic()
            response = client.post("/v2/models/cnn-digits/infer", json=v2_document())
            # Not 429 "exhausted" with a whole window's Retry-After (a minute, or a day): the
            # client used up nothing, and the storage may be back in seconds.
            assert response.status_code == 503, response.text
            assert response.json()["type"] == "urn:frameworm:problem:not-ready"
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["retry-after"] == "2"
            assert not set(LIMITED_HEADERS) & set(response.headers)
            assert time.monotonic() - started < 2
        assert model_work(client) == work
