"""What the server makes of FRAMEWORM_FOLLOW_STAGE beside other settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.integration.app.apps import app_settings, running_app
from tests.support.models import MODEL, register_mlp


def test_following_a_stage_with_a_pinned_version_says_it_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_mlp(registry, "1.0.0", tmp_path, seed=1)
    settings = app_settings(
        tmp_path / "registry", model=MODEL, model_version="1.0.0", follow_stage=True
    )
    with running_app(settings) as client:
        assert client.state["follower"] is None
    assert "FRAMEWORM_FOLLOW_STAGE is ignored: FRAMEWORM_MODEL_VERSION pins 1.0.0" in caplog.text
