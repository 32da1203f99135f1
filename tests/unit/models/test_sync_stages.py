"""Copies with --stages into a registry with a history of its own: the target's stage model
holds (production archives what it leaves) and its history records every change."""

from __future__ import annotations

from pathlib import Path

from models.registry import ModelRegistry
from models.sync import copy_model
from tests.support.models import MODEL, register_mlp


def registries(tmp_path: Path) -> tuple[ModelRegistry, ModelRegistry]:
    """Both hold 1.0.0 and 2.0.0; the target put 1.0.0 in production, the source 2.0.0."""
    source, target = ModelRegistry(tmp_path / "source"), ModelRegistry(tmp_path / "target")
    for seed, version in enumerate(("1.0.0", "2.0.0")):
        register_mlp(source, version, tmp_path, seed=seed)
    copy_model(source, target, MODEL, None, stages=False)
    target.promote(MODEL, "1.0.0", "production")
    source.promote(MODEL, "2.0.0", "production")
    return source, target


def test_following_production_archives_the_version_it_leaves_as_a_promotion_does(
    tmp_path: Path,
) -> None:
    """1.0.0 stayed "registered" though production had left it, unlike after `promote`."""
    source, target = registries(tmp_path)
    report = copy_model(source, target, MODEL, None, stages=True)
    index = target.index(MODEL)
    assert index.aliases["production"] == "2.0.0"
    assert index.status("1.0.0") == "archived"
    assert [(e.stage, e.from_version, e.version) for e in report.stage_moves] == [
        ("production", "1.0.0", "2.0.0")
    ]
    assert index.history[-1].action == "promote" and index.history[-1].from_version == "1.0.0"


def test_a_version_archived_in_the_target_stays_archived_after_another_copy(
    tmp_path: Path,
) -> None:
    """The copy un-archived it, writing no event: the history's last word was "archived"."""
    source, target = registries(tmp_path)
    register_mlp(source, "3.0.0", tmp_path, seed=3)
    copy_model(source, target, MODEL, None, stages=True)
    target.archive(MODEL, "3.0.0", reason="never serve")
    before = target.index(MODEL)
    copy_model(source, target, MODEL, None, stages=True)
    after = target.index(MODEL)
    assert after.status("3.0.0") == "archived"
    assert after == before  # nothing to copy, nothing changed
