"""The result cache in a running app: deterministic models only, never random draws."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from app.inference.cache import _pack
from tests.integration.app.apps import AppClient, app_settings, running_app, sample
from tests.support.redis import RedisServer, hung, run_redis_server


@pytest.fixture(scope="module")
def cached_cnn(seeded_registry: Path) -> Iterator[AppClient]:
    settings = app_settings(seeded_registry, model="cnn-digits", result_cache="memory")
    with running_app(settings) as client:
        yield client


@pytest.fixture(scope="module")
def cached_decoder(seeded_registry: Path) -> Iterator[AppClient]:
    settings = app_settings(seeded_registry, model="vae-digits-decoder", result_cache="memory")
    with running_app(settings) as client:
        yield client


@pytest.fixture(scope="module")
def cache_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with run_redis_server(tmp_path_factory.mktemp("cache-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cached_cnn(seeded_registry: Path, cache_redis: RedisServer) -> Iterator[AppClient]:
    settings = app_settings(
        seeded_registry, model="cnn-digits", result_cache="redis", redis_url=cache_redis.url
    )
    with running_app(settings) as client:
        yield client


def counter(client: AppClient, result: str) -> float:
    return sample(client, f'frameworm_result_cache_requests_total{{result="{result}"}}')


def image(value: float) -> dict[str, Any]:
    return {"inputs": {"image": [[[[value] * 28] * 28]]}}


def test_a_repeated_input_is_answered_from_the_cache_with_the_same_outputs(
    cached_cnn: AppClient,
) -> None:
    body = {"inputs": {"image": [[[[0.5] * 28] * 28]]}}
    first = cached_cnn.post("/infer", json=body)
    hits_before = counter(cached_cnn, "hit")
    second = cached_cnn.post("/infer", json=body)
    assert first.status_code == second.status_code == 200
    assert first.json()["outputs"] == second.json()["outputs"]
    assert second.json()["version"] == "1.0.0"
    assert counter(cached_cnn, "hit") == hits_before + 1


def test_a_different_input_is_a_miss(cached_cnn: AppClient) -> None:
    misses = counter(cached_cnn, "miss")
    response = cached_cnn.post("/infer", json={"inputs": {"image": [[[[0.25] * 28] * 28]]}})
    assert response.status_code == 200
    assert counter(cached_cnn, "miss") == misses + 1


def test_seeded_generation_is_cached_but_unseeded_generation_never_is(
    cached_decoder: AppClient,
) -> None:
    seeded = {"parameters": {"batch_size": 2, "seed": 3}}
    assert cached_decoder.post("/infer", json=seeded).status_code == 200
    hits = counter(cached_decoder, "hit")
    assert cached_decoder.post("/infer", json=seeded).status_code == 200
    assert counter(cached_decoder, "hit") == hits + 1

    lookups = counter(cached_decoder, "hit") + counter(cached_decoder, "miss")
    unseeded = {"parameters": {"batch_size": 2}}
    first = cached_decoder.post("/infer", json=unseeded).json()["outputs"]["image"]
    second = cached_decoder.post("/infer", json=unseeded).json()["outputs"]["image"]
    assert first != second  # fresh draws, not a cached answer
    assert counter(cached_decoder, "hit") + counter(cached_decoder, "miss") == lookups


def test_a_redis_entry_that_does_not_fit_the_request_is_a_miss_and_the_model_answers(
    redis_cached_cnn: AppClient, cache_redis: RedisServer
) -> None:
    """A [3, 7] array was served for one item's [1, 10] probabilities, bool and int64 arrays
    as false and 0, a big-endian or 0-d array was a 500, and each counted as a hit."""
    store = redis.Redis(port=cache_redis.port)
    store.flushdb()
    body = image(0.75)
    answer = redis_cached_cnn.post("/infer", json=body).json()["outputs"]
    deadline = time.monotonic() + 5
    while not (keys := store.keys("frameworm:result:*")) and time.monotonic() < deadline:
        time.sleep(0.02)  # the write is in the background
    assert len(keys) == 1
    misfits: dict[str, list[np.ndarray]] = {
        "three-by-seven": [np.zeros((3, 7), dtype=np.float32)],
        "bool": [np.zeros((1, 10), dtype=np.bool_)],
        "int64": [np.zeros((1, 10), dtype=np.int64)],
        "big-endian": [np.zeros((1, 10), dtype=">f8")],
        "zero-d": [np.array(0.5, dtype=np.float32)],
        "two-outputs": [np.zeros((1, 10), dtype=np.float32)] * 2,
    }
    for name, outputs in misfits.items():
        store.set(keys[0], _pack(outputs))
        hits = counter(redis_cached_cnn, "hit")
        response = redis_cached_cnn.post("/infer", json=body)
        assert (response.status_code, response.json()["outputs"]) == (200, answer), name
        assert counter(redis_cached_cnn, "hit") == hits, name
    store.close()


def test_a_hung_redis_adds_no_wait_to_requests_after_its_first_failure(
    redis_cached_cnn: AppClient, cache_redis: RedisServer
) -> None:
    """Each request waited out the lookup's and the write's 50 ms timeouts for as long as
    Redis hung: a median of 6.8 ms became 107 ms."""

    def took(value: float) -> float:
        started = time.monotonic()
        assert redis_cached_cnn.post("/infer", json=image(value)).status_code == 200
        return time.monotonic() - started

    usual = statistics.median(took(0.1 + i / 1000) for i in range(20))  # misses, Redis up
    with hung(cache_redis):
        took(0.2)  # the first failure
        during = statistics.median(took(0.3 + i / 1000) for i in range(20))
    assert during < usual + 0.04, (usual, during)
    # Redis is back: within a probe or two, a repeated input is a hit again.
    deadline = time.monotonic() + 5
    hits = counter(redis_cached_cnn, "hit")
    while counter(redis_cached_cnn, "hit") == hits and time.monotonic() < deadline:
        took(0.9)
        time.sleep(0.05)
    assert counter(redis_cached_cnn, "hit") > hits
