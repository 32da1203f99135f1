"""The stage model: alias moves and the rollback stack replayed from the history."""

from __future__ import annotations

import pytest

from models.manifest import Stage
from models.stages import ModelIndex, archive_version, move_alias, rollback_target


def index(*versions: str) -> ModelIndex:
    return ModelIndex(name="m", versions=list(versions))


def promote(ix: ModelIndex, version: str, stage: Stage) -> None:
    move_alias(ix, stage, version, "promote", "tester", "")


def rollback(ix: ModelIndex, stage: Stage) -> None:
    target = rollback_target(ix, stage)
    assert target is not None, f"nothing to roll {stage} back to"
    move_alias(ix, stage, target, "rollback", "tester", "")


def archive(ix: ModelIndex, version: str) -> None:
    archive_version(ix, version, "tester", "")


def test_each_stage_rolls_back_along_its_own_stack() -> None:
    ix = index("1.0.0", "1.1.0", "2.0.0", "2.1.0")
    promote(ix, "1.0.0", "production")
    promote(ix, "2.0.0", "staging")
    promote(ix, "1.1.0", "production")
    promote(ix, "2.1.0", "staging")
    assert rollback_target(ix, "production") == "1.0.0"
    assert rollback_target(ix, "staging") == "2.0.0"
    rollback(ix, "staging")
    assert ix.aliases == {"staging": "2.0.0", "production": "1.1.0"}
    assert rollback_target(ix, "staging") is None


@pytest.mark.parametrize("consumed_by", ["production", "archive"])
def test_staging_cannot_roll_back_past_the_point_where_it_was_cleared(consumed_by: str) -> None:
    ix = index("1.0.0", "1.1.0", "1.2.0")
    promote(ix, "1.0.0", "staging")
    if consumed_by == "production":
        promote(ix, "1.0.0", "production")
    else:
        archive(ix, "1.0.0")
    assert ix.aliases["staging"] is None
    promote(ix, "1.1.0", "staging")
    # Back past the clear would point staging at production's (or an archived) version.
    assert rollback_target(ix, "staging") is None
    promote(ix, "1.2.0", "staging")
    assert rollback_target(ix, "staging") == "1.1.0"


def test_a_production_rollback_onto_the_staging_version_clears_staging_and_its_stack() -> None:
    ix = index("1.0.0", "2.0.0", "3.0.0")
    promote(ix, "1.0.0", "production")
    promote(ix, "2.0.0", "production")
    promote(ix, "3.0.0", "staging")
    promote(ix, "1.0.0", "staging")
    rollback(ix, "production")  # back to 1.0.0, which staging held
    assert ix.aliases == {"staging": None, "production": "1.0.0"}
    assert rollback_target(ix, "staging") is None


def test_archiving_a_version_staging_does_not_hold_leaves_staging_alone() -> None:
    ix = index("1.0.0", "1.1.0", "0.9.0")
    promote(ix, "1.0.0", "staging")
    promote(ix, "1.1.0", "staging")
    archive(ix, "0.9.0")
    assert rollback_target(ix, "staging") == "1.0.0"


@pytest.mark.parametrize("consumed_by", ["production", "archive"])
def test_staging_never_rolls_back_onto_a_version_production_took_or_the_archive_holds(
    consumed_by: str,
) -> None:
    ix = index("1.0.0", "2.0.0", "3.0.0")
    promote(ix, "1.0.0", "staging")
    promote(ix, "2.0.0", "staging")  # staging's stack: 1.0.0 below 2.0.0
    if consumed_by == "production":
        promote(ix, "1.0.0", "production")
    else:
        archive(ix, "1.0.0")
    assert ix.aliases["staging"] == "2.0.0"  # staging itself was not cleared
    assert rollback_target(ix, "staging") is None
    promote(ix, "3.0.0", "staging")
    assert rollback_target(ix, "staging") == "2.0.0"


def test_staging_never_rolls_back_onto_a_version_production_left_for_the_archive() -> None:
    """Production leaving 1.1.0 archives it; staging's stack held it from before."""
    ix = index("1.1.0", "1.2.0", "2.0.0")
    promote(ix, "1.1.0", "production")
    promote(ix, "1.1.0", "staging")
    promote(ix, "1.2.0", "staging")
    promote(ix, "2.0.0", "production")
    assert "1.1.0" in ix.archived
    assert rollback_target(ix, "staging") is None


def test_staging_never_rolls_back_onto_the_version_production_holds() -> None:
    """1.1.0 went to staging while production already held it: production never took it."""
    ix = index("1.1.0", "1.2.0", "1.3.0")
    promote(ix, "1.1.0", "production")
    promote(ix, "1.1.0", "staging")
    promote(ix, "1.2.0", "staging")
    assert rollback_target(ix, "staging") is None
    promote(ix, "1.3.0", "staging")
    assert rollback_target(ix, "staging") == "1.2.0"
    rollback(ix, "staging")
    assert ix.aliases == {"staging": "1.2.0", "production": "1.1.0"}
    assert rollback_target(ix, "staging") is None


@pytest.mark.parametrize("consumed_by", ["production", "archive"])
def test_staging_never_rolls_back_onto_the_version_it_holds_when_one_below_it_leaves(
    consumed_by: str,
) -> None:
    """Staging's stack 1.0.0, 1.1.0, 1.0.0 less 1.1.0 left 1.0.0 twice: a rollback from 1.0.0
    "to" 1.0.0, recorded in the history as a move."""
    ix = index("1.0.0", "1.1.0", "1.2.0")
    promote(ix, "1.2.0", "production")
    promote(ix, "1.0.0", "staging")
    promote(ix, "1.1.0", "staging")
    promote(ix, "1.0.0", "staging")
    if consumed_by == "production":
        promote(ix, "1.1.0", "production")
    else:
        archive(ix, "1.1.0")
    assert ix.aliases["staging"] == "1.0.0"
    assert rollback_target(ix, "staging") is None
    promote(ix, "1.2.0" if consumed_by == "production" else "1.1.0", "staging")
    assert rollback_target(ix, "staging") == "1.0.0"
