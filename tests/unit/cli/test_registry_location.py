"""An empty registry location is refused, never read as the default registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from models.registry import ModelRegistry
from tests.support.models import MODEL, register_mlp


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["list", "--registry", ""], "--registry"),
        (["rollback", MODEL, "--skip-checks", "--registry", "  "], "--registry"),
        (["push", MODEL, "--registry", "{other}", "--to", ""], "--to"),
        (["pull", MODEL, "--registry", "{other}", "--from", ""], "--from"),
    ],
    ids=["list", "rollback-blank", "push-to", "pull-from"],
)
def test_an_empty_location_is_refused_and_the_default_registry_is_left_alone(
    tmp_path: Path, argv: list[str], option: str
) -> None:
    """`--registry "$REG"` with REG unset used to act on the default registry (FRAMEWORM_REGISTRY,
    else ~/.frameworm/registry): list it, roll it back, copy it or copy into it."""
    default, other = ModelRegistry(tmp_path / "default"), ModelRegistry(tmp_path / "other")
    for registry in (default, other):
        for i, version in enumerate(("1.0.0", "2.0.0")):
            register_mlp(registry, version, tmp_path, seed=i)
            registry.promote(MODEL, version, "production")
    before = default.store.read(f"{MODEL}/index.json")
    result = CliRunner().invoke(
        cli,
        ["registry", *(a.format(other=other.store.url) for a in argv)],
        env={"FRAMEWORM_REGISTRY": default.store.url},
    )
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: {option}: empty: name the registry's directory or s3://bucket/prefix"
    ]
    assert default.store.read(f"{MODEL}/index.json") == before
