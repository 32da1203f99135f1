"""`frameworm registry push/pull` accept NAME [VERSION] or --all, and refuse the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tests.support.models as models_support
from app.cli import cli
from models.registry import ModelRegistry


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["push", "--to", "{other}"], "name a model, or pass --all"),
        (["push", "m", "--all", "--to", "{other}"], "name a model, or pass --all"),
        (["pull", "--from", "{other}"], "name a model, or pass --all"),
        (["push", "--all", "--to", "{here}"], "source and target are the same registry"),
        (["pull", "m", "--from", "{other}"], "model 'm' is not registered"),
    ],
    ids=["push-nothing", "push-both", "pull-nothing", "same-registry", "unknown-model"],
)
def test_copy_commands_refuse_ambiguous_or_empty_requests(
    args: list[str], message: str, tmp_path: Path
) -> None:
    here, other = tmp_path / "here", tmp_path / "other"
    here.mkdir()
    other.mkdir()
    argv = [a.format(here=here, other=other) for a in args]
    result = CliRunner().invoke(cli, ["registry", *argv], env={"FRAMEWORM_REGISTRY": str(here)})
    assert result.exit_code == 1
    assert message in result.output


def test_copying_an_empty_registry_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        cli,
        ["registry", "push", "--all", "--to", str(tmp_path / "backup")],
        env={"FRAMEWORM_REGISTRY": str(tmp_path / "empty")},
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "(no models)"


@pytest.mark.parametrize("command", ["push", "pull"])
def test_a_source_directory_that_does_not_exist_is_an_error_not_an_empty_copy(
    command: str, tmp_path: Path
) -> None:
    """A mistyped path must not pass as an empty backup or an empty restore."""
    here, missing = tmp_path / "here", tmp_path / "typo"
    here.mkdir()
    if command == "push":
        argv, env = ["push", "--all", "--to", str(here)], {"FRAMEWORM_REGISTRY": str(missing)}
    else:
        argv, env = ["pull", "--all", "--from", str(missing)], {"FRAMEWORM_REGISTRY": str(here)}
    result = CliRunner().invoke(cli, ["registry", *argv], env=env)
    assert result.exit_code == 1
    assert result.output.strip() == f"error: no registry at {missing}: the directory does not exist"


def test_a_damaged_model_is_reported_and_every_other_model_still_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`push --all` is the chart's backup and `pull --all` its s3Pull start: one model whose
    index could not be read stopped the copy, leaving every model after it out."""
    source = ModelRegistry(str(tmp_path / "source"))
    for name in ("alpha", "beta", "zeta"):
        monkeypatch.setattr(models_support, "MODEL", name)
        models_support.register_mlp(source, "1.0.0", tmp_path, seed=1)
    (tmp_path / "source" / "beta" / "index.json").write_bytes(b"")  # damaged
    result = CliRunner().invoke(
        cli,
        ["registry", "push", "--all", "--to", str(tmp_path / "backup"), "--json"],
        env={"FRAMEWORM_REGISTRY": str(tmp_path / "source")},
    )
    assert result.exit_code == 1, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["alpha"]["error"] is None and rows["zeta"]["error"] is None
    assert "beta/index.json" in rows["beta"]["error"]
    assert ModelRegistry(str(tmp_path / "backup")).list_models() == ["alpha", "zeta"]
