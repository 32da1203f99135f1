"""Credentials in: which header carries the API key, and what a 401 tells the client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.production import APIKeyAuth
from tests.integration.app.apps import AppClient, app_settings, running_app

PEPPER = "p" * 40
METRICS_TOKEN = "metrics-token-0123456789"


@pytest.fixture(scope="module")
def guarded(
    seeded_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AppClient, str]]:
    settings = app_settings(
        seeded_registry,
        model="vae-digits-decoder",
        auth_enabled=True,
        api_keys_file=tmp_path_factory.mktemp("keys") / "api-keys.json",
        api_key_pepper=PEPPER,
        metrics_token=METRICS_TOKEN,
    )
    key = APIKeyAuth(settings=settings).create_key("alice")
    with running_app(settings) as client:
        yield client, key


GENERATE = {"parameters": {"batch_size": 1, "seed": 1}}


def test_an_empty_x_api_key_does_not_hide_a_valid_bearer_token(
    guarded: tuple[AppClient, str],
) -> None:
    client, key = guarded
    headers = {"x-api-key": "", "authorization": f"Bearer {key}"}
    response = client.post("/infer", json=GENERATE, headers=headers)
    assert response.status_code == 200, response.text


def test_a_non_empty_x_api_key_is_still_the_one_judged(guarded: tuple[AppClient, str]) -> None:
    client, key = guarded
    headers = {"x-api-key": "wrong", "authorization": f"Bearer {key}"}
    response = client.post("/infer", json=GENERATE, headers=headers)
    assert response.status_code == 401


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", "Bearer ", f"Basic {METRICS_TOKEN}", "Bearer"]
)
def test_a_metrics_401_says_how_to_authenticate(
    guarded: tuple[AppClient, str], authorization: str | None
) -> None:
    client, _ = guarded
    headers = {"authorization": authorization} if authorization else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer realm=")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_metrics_are_served_with_the_token(guarded: tuple[AppClient, str], scheme: str) -> None:
    client, _ = guarded
    response = client.get("/metrics", headers={"authorization": f"{scheme} {METRICS_TOKEN}"})
    assert response.status_code == 200
