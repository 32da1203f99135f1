"""Probes: /healthz always answers; /readyz follows the model's state and the drain."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest

from app.production import APIKeyAuth
from models.demo import seed_demo
from models.registry import ModelRegistry
from tests.integration.app.apps import AppClient, app_settings, running_app, wait_ready


def test_readyz_is_503_while_loading_then_200_with_verbose_checks(tmp_path: Path) -> None:
    # An empty registry fails the first load attempt; seeding it lets a retry succeed.
    registry = tmp_path / "registry"
    settings = app_settings(registry, load_retries=4)
    with running_app(settings, ready=False) as client:
        early = client.get("/readyz?verbose")
        assert client.get("/healthz").status_code == 200
        # Every 503 of this server says when to ask again, the readiness answers too.
        for path in ("/v2/health/ready", "/v2/models/cnn-digits/ready", "/readyz"):
            not_ready = client.get(path)
            assert not_ready.status_code == 503, path
            assert not_ready.headers["retry-after"] == "1", path
        # While loading, the served model's routes are 503; any other model is 404 already.
        assert client.get("/v2/models/cnn-digits").status_code == 503
        other = [
            client.get("/v2/models/nope"),
            client.get("/v2/models/nope/versions/1.0.0"),
            client.post("/v2/models/nope/infer", json={"inputs": []}),
            client.post("/v2/models/nope/versions/1.0.0/infer", json={"inputs": []}),
        ]
        seed_demo(ModelRegistry(registry))
        wait_ready(client)
        ready = client.get("/readyz?verbose")
        terse = client.get("/readyz")
        frozen = gc.get_freeze_count()  # what startup built is out of full collections

    assert [r.status_code for r in other] == [404] * 4
    assert early.status_code == 503
    assert early.json()["status"] == "unavailable"
    assert early.json()["checks"]["model"]["ok"] is False
    assert early.json()["checks"]["model"]["reason"]
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["model"] == {
        "ok": True,
        "reason": "the model is loaded, warm and checked",
        "model": "cnn-digits",
        "version": "1.0.0",
    }
    assert checks["draining"]["ok"] is True
    assert terse.json() == {"status": "ready"}
    assert frozen > 0


def test_readyz_names_why_a_model_that_cannot_load_keeps_the_app_unready(
    tmp_path: Path,
) -> None:
    settings = app_settings(tmp_path / "empty", load_retries=1)
    with running_app(settings, ready=False) as client:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            model = client.get("/readyz?verbose").json()["checks"]["model"]
            if "failed" in model["reason"]:
                break
            time.sleep(0.05)
        assert client.get("/healthz").status_code == 200
        infer = client.post("/infer", json={"inputs": {}})
    assert model["ok"] is False
    assert "attempt 1 of 1" in model["reason"]
    assert infer.status_code == 503
    assert infer.json()["code"] == "not-ready"
    assert "retry-after" in infer.headers


def test_healthz_is_200_with_no_store(cnn: AppClient) -> None:
    response = cnn.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


def test_v2_liveness_and_readiness_answer_once_ready(cnn: AppClient) -> None:
    assert cnn.get("/v2/health/live").json() == {"live": True}
    assert cnn.get("/v2/health/ready").json() == {"ready": True}
    assert cnn.get("/v2/models/cnn-digits/ready").json() == {"name": "cnn-digits", "ready": True}
    assert cnn.get("/v2/models/cnn-digits/versions/1.0.0/ready").status_code == 200


def test_readyz_turns_503_once_the_drain_begins(seeded_registry: Path) -> None:
    with running_app(app_settings(seeded_registry)) as client:
        app = client.app
        app.state.lifecycle.begin_drain()
        response = client.get("/readyz?verbose")
        live = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["draining"] == {"ok": False, "reason": "shutting down"}
    assert live.status_code == 200


def test_at_shutdown_a_joined_shutdown_s_hooks_run_after_the_work_it_tracks(
    tmp_path: Path,
) -> None:
    # The building block's contract: the server's drain waits for tracked work, then the hooks.
    from app.production import GracefulShutdown

    user = GracefulShutdown(timeout=5)
    seen_in_flight: list[int] = []
    user.register_handler(lambda: seen_in_flight.append(user.inflight))
    work = user.track_request()
    with running_app(app_settings(tmp_path / "registry"), ready=False) as client:
        client.app.state.lifecycle.join(user)
        work.__enter__()  # e.g. a background job the user's code tracks
        threading.Timer(0.3, work.__exit__, (None, None, None)).start()
    assert seen_in_flight == [0]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"])
def test_head_on_a_probe_answers_as_get_without_the_body(cnn: AppClient, path: str) -> None:
    get, head = cnn.get(path), cnn.request("HEAD", path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert {**head.headers, "x-request-id": ""} == {**get.headers, "x-request-id": ""}
    assert int(head.headers["content-length"]) == len(get.content)


def test_head_on_readyz_is_503_like_get_once_the_drain_begins(seeded_registry: Path) -> None:
    with running_app(app_settings(seeded_registry)) as client:
        client.app.state.lifecycle.begin_drain()
        head = client.request("HEAD", "/readyz")
        v2_head = client.request("HEAD", "/v2/health/ready")
    assert (head.status_code, head.content) == (503, b"")
    assert (v2_head.status_code, v2_head.content) == (503, b"")


GET_ROUTES = [
    "/v2",
    "/v2/models/cnn-digits",
    "/v2/models/cnn-digits/versions/1.0.0",
    "/v2/models/cnn-digits/ready",
    "/v2/models/cnn-digits/versions/1.0.0/ready",
    "/metrics",
]


@pytest.mark.parametrize("path", GET_ROUTES)
def test_head_on_a_get_route_answers_as_get_without_the_body(cnn: AppClient, path: str) -> None:
    get, head = cnn.get(path), cnn.request("HEAD", path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the metrics change between two scrapes
        changing = dict.fromkeys(["x-request-id", "ratelimit-remaining", "ratelimit-reset"], "")
        assert {**head.headers, **changing} == {**get.headers, **changing}
        assert int(head.headers["content-length"]) == len(get.content)


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/cnn-digits/versions/9.9.9/ready"])
def test_head_on_another_model_is_404_like_get(cnn: AppClient, path: str) -> None:
    assert cnn.request("HEAD", path).status_code == cnn.get(path).status_code == 404


@pytest.mark.parametrize("path", GET_ROUTES)
def test_a_405_on_a_get_route_names_get_and_head(cnn: AppClient, path: str) -> None:
    response = cnn.request("PUT", path)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_head_is_authenticated_like_get(
    seeded_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    token = "metrics-token-0123456789"
    settings = app_settings(
        seeded_registry,
        auth_enabled=True,
        api_keys_file=tmp_path_factory.mktemp("keys") / "api-keys.json",
        api_key_pepper="p" * 40,
        metrics_token=token,
    )
    key = APIKeyAuth(settings=settings).create_key("alice")
    guarded = GET_ROUTES[1:-1]
    with running_app(settings) as client:
        anonymous = {p: client.request("HEAD", p).status_code for p in GET_ROUTES}
        with_key = [client.request("HEAD", p, headers={"x-api-key": key}) for p in guarded]
        bearer = [
            client.request("HEAD", p, headers={"authorization": f"Bearer {key}"}) for p in guarded
        ]
        scrape = client.request("HEAD", "/metrics", headers={"authorization": f"Bearer {token}"})
    assert anonymous == {"/v2": 200, **dict.fromkeys(guarded, 401), "/metrics": 401}
    assert [(r.status_code, r.content) for r in with_key + bearer] == [(200, b"")] * 8
    assert (scrape.status_code, scrape.content) == (200, b"")
