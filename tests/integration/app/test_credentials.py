"""Credentials in: which header carries the API key, and what a 401 tells the client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.middleware import auth as auth_middleware
from app.production import APIKeyAuth
from tests.integration.app.apps import AppClient, app_settings, running_app

PEPPER = "p" * 40
METRICS_TOKEN = "metrics-token-0123456789"
BOOTSTRAP = "bootstrap-key-shaped-as-it-pleases-0123"


def guarded_settings(registry: Path, keys_dir: Path, **overrides: Any) -> Settings:
    """Auth on, with a pepper and a metrics token; the decoder, which needs no input."""
    return app_settings(
        registry,
        model="vae-digits-decoder",
        auth_enabled=True,
        api_keys_file=keys_dir / "api-keys.json",
        api_key_pepper=PEPPER,
        metrics_token=METRICS_TOKEN,
        bootstrap_api_key=BOOTSTRAP,
        **overrides,
    )


@pytest.fixture(scope="module")
def guarded(
    seeded_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[AppClient, str]]:
    settings = guarded_settings(seeded_registry, tmp_path_factory.mktemp("keys"))
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


@pytest.mark.parametrize(
    "presented",
    [
        [("x-api-key", "wrong"), ("authorization", "Bearer {key}")],
        # was served: 200
        [("x-api-key", "{key}"), ("authorization", "Bearer fw_0123456789abcdef_secret")],
        [("x-api-key", "{key}"), ("x-api-key", "wrong")],  # was served: the last one won
        [("x-api-key", "wrong"), ("x-api-key", "{key}")],
        # was served: a key whose prefix has a digit was not taken for a key
        [("x-api-key", "{key}"), ("authorization", "Bearer k8s_0123456789abcdef_secret")],
        # was served: the last Authorization line won (a gateway may check the first)
        [("authorization", "Bearer fw_0123456789abcdef_secret"), ("authorization", "Bearer {key}")],
        # was served as alice: the bootstrap key is not shaped as the issued keys are
        [("x-api-key", "{key}"), ("authorization", "Bearer {bootstrap}")],
        [("x-api-key", "{bootstrap}"), ("authorization", "Bearer {key}")],
    ],
)
def test_two_different_keys_in_one_request_are_refused(
    guarded: tuple[AppClient, str], presented: list[tuple[str, str]]
) -> None:
    """Which one speaks for the client? A gateway in front that picked another one than the
    server would check one key and meter or log the request as another's."""
    client, key = guarded
    headers = [(name, value.format(key=key, bootstrap=BOOTSTRAP)) for name, value in presented]
    response = client.post("/infer", json=GENERATE, headers=headers)
    assert response.status_code == 401
    text = client.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert 'frameworm_auth_failures_total{reason="ambiguous"}' in text


def test_a_gateway_s_own_bearer_token_beside_an_x_api_key_is_not_a_second_key(
    guarded: tuple[AppClient, str],
) -> None:
    """Cloud Run IAM, oauth2-proxy or a mesh pass their JWT on as a bearer: no key of ours."""
    client, key = guarded
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjbGllbnQifQ.c2lnbmF0dXJl"
    headers = {"x-api-key": key, "authorization": f"Bearer {jwt}"}
    assert client.post("/infer", json=GENERATE, headers=headers).status_code == 200


def test_the_same_key_twice_is_one_key(guarded: tuple[AppClient, str]) -> None:
    client, key = guarded
    headers = [("x-api-key", key), ("authorization", f"Bearer {key}"), ("x-api-key", key)]
    assert client.post("/infer", json=GENERATE, headers=headers).status_code == 200


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


@pytest.mark.parametrize("first", [True, False])
def test_metrics_with_two_different_authorization_lines_is_401(
    guarded: tuple[AppClient, str], first: bool
) -> None:
    """The first line was used: the token then a wrong one was served, the other order not."""
    client, _ = guarded
    lines = [("authorization", f"Bearer {METRICS_TOKEN}"), ("authorization", "Bearer wrong")]
    response = client.get("/metrics", headers=lines if first else lines[::-1])
    assert response.status_code == 401
    # One credential written twice, however: the same token (as for API keys).
    for same in (
        [lines[0], lines[0]],
        [lines[0], ("authorization", f"bearer {METRICS_TOKEN} ")],
        [("authorization", ""), lines[0]],
    ):
        assert client.get("/metrics", headers=same).status_code == 200, same


def test_a_path_one_slash_off_a_route_is_404_not_a_redirect(
    guarded: tuple[AppClient, str],
) -> None:
    # A 307 would take its Location from the client's Host header, and clients follow it
    # resending their key.
    client, key = guarded
    response = client.post(
        "/infer/", json=GENERATE, headers={"x-api-key": key, "host": "evil.example"}
    )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"


def test_made_up_paths_refused_without_a_key_add_no_metrics_series(
    guarded: tuple[AppClient, str],
) -> None:
    client, _ = guarded
    metrics = {"authorization": f"Bearer {METRICS_TOKEN}"}
    for i in range(3):
        assert client.get(f"/v2/models/made-up-{i}/").status_code == 401
    text = client.get("/metrics", headers=metrics).text
    assert "made-up" not in text
    # Refused before routing under a real route, the request is counted by its template.
    client.post("/v2/models/vae-digits-decoder/infer", json={})
    text = client.get("/metrics", headers=metrics).text
    assert 'handler="/v2/models/{name}/infer",method="POST",status="4xx"' in text


def test_guessing_the_metrics_token_spends_the_budget_of_failed_authentications(
    seeded_registry: Path, tmp_path: Path
) -> None:
    settings = guarded_settings(seeded_registry, tmp_path, auth_failure_limit="3/minute")
    with running_app(settings) as client:
        wrong = {"authorization": "Bearer guess"}
        statuses = [client.get("/metrics", headers=wrong).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        # One budget: API keys from the same address are refused 429 too, valid ones aside.
        assert (
            client.post("/infer", json=GENERATE, headers={"x-api-key": "nope"}).status_code == 429
        )
        text = client.get("/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert 'frameworm_auth_failures_total{reason="metrics_token"} 4.0' in text


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_thousands_of_credential_lines_are_read_no_further_than_the_second_key(
    header: str,
) -> None:
    """Each line was compared with every other (4,000 lines: half a second of the event loop,
    before any key was checked, from a client without one)."""
    value = "{}" if header == "x-api-key" else "Bearer {}"
    lines = [
        (header.encode(), value.format(f"fw_{i:016x}_{'s' * 32}").encode()) for i in range(4000)
    ]
    tokens = auth_middleware._tokens({"headers": lines}, lambda token: False)
    assert tokens == [f"fw_{i:016x}_{'s' * 32}" for i in range(2)]
