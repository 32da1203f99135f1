"""`frameworm registry rollback` checks the version it goes back to, as a promotion does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from models.registry import ModelRegistry
from tests.support.models import MODEL, register_mlp


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """Production promoted to 1.0.0, then 2.0.0: rollback goes back to 1.0.0."""
    registry = ModelRegistry(tmp_path / "registry")
    for i, version in enumerate(("1.0.0", "2.0.0")):
        register_mlp(registry, version, tmp_path, seed=i)
        registry.promote(MODEL, version, "production")
    return registry


def rollback(registry: ModelRegistry, *options: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(
        cli, ["registry", "rollback", MODEL, *options, f"--registry={registry.store.url}"]
    )
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    return result.exit_code, result.output.splitlines()


def tamper(registry: ModelRegistry, version: str) -> None:
    artefact = Path(registry.store.url) / MODEL / version / "model.safetensors"
    data = bytearray(artefact.read_bytes())
    data[-1] ^= 0xFF
    artefact.write_bytes(bytes(data))


def test_a_rollback_onto_a_sound_version_moves_production(registry: ModelRegistry) -> None:
    assert rollback(registry) == (0, [f"{MODEL}: production -> 1.0.0"])
    assert registry.index(MODEL).aliases["production"] == "1.0.0"


def test_a_rollback_onto_a_tampered_version_is_refused_and_moves_nothing(
    registry: ModelRegistry,
) -> None:
    tamper(registry, "1.0.0")
    code, lines = rollback(registry)
    assert code == 1
    assert len(lines) == 1 and "tampered" in lines[0]
    assert registry.index(MODEL).aliases["production"] == "2.0.0"


def test_skip_checks_rolls_back_without_loading(registry: ModelRegistry) -> None:
    tamper(registry, "1.0.0")
    assert rollback(registry, "--skip-checks") == (0, [f"{MODEL}: production -> 1.0.0"])


def test_staging_has_nothing_to_roll_back_to_once_the_version_between_is_archived(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """Staging went 1.0.0, 3.0.0, 1.0.0; archiving 3.0.0 left nothing earlier than 1.0.0 (the
    rollback used to "move" staging from 1.0.0 to 1.0.0 and record it)."""
    register_mlp(registry, "3.0.0", tmp_path, seed=3)
    for version in ("1.0.0", "3.0.0", "1.0.0"):
        registry.promote(MODEL, version, "staging")
    registry.archive(MODEL, "3.0.0")
    before = registry.index(MODEL)
    code, lines = rollback(registry, "staging")
    assert code == 1
    assert lines == [f"error: {MODEL} has no earlier staging version to roll back to"]
    assert registry.index(MODEL) == before


def while_checking(
    monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[ModelRegistry], object]
) -> None:
    """Have someone else change the registry while the rollback checks its target (seconds for
    a big artefact), through another registry object, as another process would."""
    check = ModelRegistry.check

    def check_while_someone_writes(reg: ModelRegistry, name: str, version: str) -> object:
        meanwhile(ModelRegistry(reg.store.url))
        return check(reg, name, version)

    monkeypatch.setattr(ModelRegistry, "check", check_while_someone_writes)


def test_a_registration_while_the_target_is_checked_does_not_fail_the_rollback(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It failed with "tiny is at revision 5, not 4; re-read and retry", a revision the operator
    never gave, although the registration left the target as it was."""
    while_checking(monkeypatch, lambda other: register_mlp(other, "3.0.0", tmp_path, seed=3))
    assert rollback(registry) == (0, [f"{MODEL}: production -> 1.0.0"])
    index = registry.index(MODEL)
    assert index.aliases["production"] == "1.0.0"
    assert "3.0.0" in index.versions


def test_a_stage_move_while_the_target_is_checked_refuses_the_rollback(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rolling back now would go to 2.0.0, a version nobody checked: refused, naming both."""

    def promote_another(other: ModelRegistry) -> None:
        register_mlp(other, "3.0.0", tmp_path, seed=3)
        other.promote(MODEL, "3.0.0", "production")

    while_checking(monkeypatch, promote_another)
    assert rollback(registry) == (
        1,
        [
            f"error: {MODEL}'s production was moved meanwhile: rolling back now goes to 2.0.0, "
            "not 1.0.0; nothing was written"
        ],
    )
    assert registry.index(MODEL).aliases["production"] == "3.0.0"


def test_a_rollback_does_not_undo_a_promotion_it_never_saw(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone rolls back to 1.0.0 and promotes 3.0.0 meanwhile: the target is 1.0.0 again, the
    one checked, but moving there now would silently undo 3.0.0. Refused: the stage moved."""

    def rollback_and_promote(other: ModelRegistry) -> None:
        other.rollback(MODEL)
        register_mlp(other, "3.0.0", tmp_path, seed=3)
        other.promote(MODEL, "3.0.0", "production")

    while_checking(monkeypatch, rollback_and_promote)
    code, lines = rollback(registry)
    assert code == 1 and "production was moved meanwhile" in lines[0], lines
    assert registry.index(MODEL).aliases["production"] == "3.0.0"


@pytest.mark.parametrize("move", ["promote", "archive"])
def test_another_stage_s_move_that_changes_staging_s_target_refuses_its_rollback(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, move: str
) -> None:
    """Staging 3, 4, 5: its rollback checks 4.0.0. Production taking 4.0.0 meanwhile (or an
    archive of it) leaves staging's own history as it was but sends its rollback to 3.0.0,
    which was moved to unchecked."""
    for seed, version in enumerate(("3.0.0", "4.0.0", "5.0.0"), start=3):
        register_mlp(registry, version, tmp_path, seed=seed)
        registry.promote(MODEL, version, "staging")

    def take_the_target(other: ModelRegistry) -> None:
        if move == "promote":
            other.promote(MODEL, "4.0.0", "production")
        else:
            other.archive(MODEL, "4.0.0")

    while_checking(monkeypatch, take_the_target)
    assert rollback(registry, "staging") == (
        1,
        [
            f"error: {MODEL} 4.0.0 left staging's history meanwhile: rolling back now goes to "
            "3.0.0, not 4.0.0; nothing was written"
        ],
    )
    assert registry.index(MODEL).aliases["staging"] == "5.0.0"
