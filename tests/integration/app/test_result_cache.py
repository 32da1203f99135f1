"""The result cache in a running app: deterministic models only, never random draws."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.app.apps import AppClient, app_settings, running_app, sample


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


def counter(client: AppClient, result: str) -> float:
    return sample(client, f'frameworm_result_cache_requests_total{{result="{result}"}}')


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
