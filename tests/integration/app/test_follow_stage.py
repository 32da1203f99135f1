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


@pytest.mark.parametrize(("pinned", "stage"), [(None, "production"), ("1.0.0", "pinned")])
def test_model_info_names_the_stage_the_served_version_is_under(
    tmp_path: Path, pinned: str | None, stage: str
) -> None:
    """A pinned, archived version was shown as production beside the real production one."""
    registry = ModelRegistry(tmp_path / "registry")
    register_mlp(registry, "1.0.0", tmp_path, seed=1)
    register_mlp(registry, "1.1.0", tmp_path, seed=2)
    registry.promote(MODEL, "1.1.0", "production", actor="tests")
    settings = app_settings(tmp_path / "registry", model=MODEL, model_version=pinned)
    with running_app(settings) as client:
        text = client.get("/metrics").text
    served = [line for line in text.splitlines() if line.startswith("frameworm_model_info{")]
    assert len(served) == 1 and served[0].endswith(" 1.0"), served
    assert f'stage="{stage}"' in served[0]
    assert f'version="{pinned or "1.1.0"}"' in served[0]
