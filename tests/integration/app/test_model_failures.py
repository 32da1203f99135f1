"""A request the model fails on: its traceback and its access line name it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.integration.app.apps import app_settings, running_app
from tests.support.models import MODEL, register_guarded


def test_a_request_the_model_fails_on_is_logged_under_its_request_id_and_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The traceback carried no request id (a batch's failure, logged by the batcher), and the
    access line said model and version null: neither could be joined to the client's 500."""
    registry = ModelRegistry(tmp_path / "registry")
    register_guarded(registry, "1.0.0", tmp_path, seed=1, limit=10.0)
    registry.promote(MODEL, "1.0.0", "production", actor="tests")
    settings = app_settings(tmp_path / "registry", model=MODEL)
    with caplog.at_level(logging.INFO), running_app(settings) as client:
        response = client.post("/infer", json={"inputs": {"x": [[50.0, 0.0, 0.0, 0.0]]}})
        assert client.post("/infer", json={"inputs": {"x": [[1.0, 0.0, 0.0, 0.0]]}}).is_success
    assert response.status_code == 500, response.text
    request_id = response.headers["x-request-id"]
    assert response.json()["request_id"] == request_id
    (failure,) = [r for r in caplog.records if r.getMessage() == "the model failed on a request"]
    assert failure.exc_info is not None and failure.levelno == logging.ERROR
    assert (failure.request_id, failure.model, failure.version) == (request_id, MODEL, "1.0.0")  # type: ignore[attr-defined]
    (access,) = [
        r
        for r in caplog.records
        if getattr(r, "request_id", None) == request_id and r.getMessage() == "request"
    ]
    assert (access.status, access.model, access.version) == (500, MODEL, "1.0.0")  # type: ignore[attr-defined]
