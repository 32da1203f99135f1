"""A registry file that may not be read (another user's 0600 file, say) is damage to name, like a
corrupt one: it hides no other version or model, and keeps no server of another model down."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.inference.host import ModelHost
from models.registry import ModelRegistry
from models.store import LocalStore
from tests.unit.models.conftest import Register


def forbid(monkeypatch: pytest.MonkeyPatch, *keys: str) -> None:
    """Make the store's reads of `keys` fail as a file of another user's, mode 0600, does."""
    real_read = LocalStore.read

    def read(store: LocalStore, key: str) -> bytes | None:
        if key in keys:
            raise PermissionError(13, "Permission denied", str(store.root / key))
        return real_read(store, key)

    monkeypatch.setattr(LocalStore, "read", read)


def test_verify_reports_an_unreadable_manifest_and_checks_the_other_versions(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        register("tiny", version)
    forbid(monkeypatch, "tiny/2.0.0/manifest.json")
    results = {r.version: r for r in registry.verify("tiny")}
    assert results["1.0.0"].ok and results["3.0.0"].ok
    assert not results["2.0.0"].ok
    assert "Permission denied" in results["2.0.0"].detail
    assert "tiny/2.0.0/manifest.json" in results["2.0.0"].detail


def test_verify_reports_an_unreadable_index_as_one_failed_row(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    register("tiny", "1.0.0")
    forbid(monkeypatch, "tiny/index.json")
    [result] = registry.verify("tiny")
    assert (result.name, result.version, result.ok) == ("tiny", None, False)
    assert "Permission denied" in result.detail


def test_a_model_whose_index_may_not_be_read_is_still_listed_and_the_registry_not_empty(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    register("other", "1.0.0", seed=2)
    register("tiny", "1.0.0")
    forbid(monkeypatch, "other/index.json")
    assert registry.list_models() == ["other", "tiny"]
    assert not registry.is_empty()
    forbid(monkeypatch, "other/index.json", "tiny/index.json")
    assert not registry.is_empty()  # what is there but unreadable is not "nothing"


def test_an_empty_registry_is_empty(registry: ModelRegistry, register: Register) -> None:
    assert registry.is_empty()
    register("tiny", "1.0.0")
    assert not registry.is_empty()


def serving(registry: ModelRegistry, model: str) -> ModelHost:
    settings = Settings(
        _env_file=None,
        registry=registry.store.url,
        model=model,
        warmup=False,
        retain_freed_memory=False,
        device="cpu",
    )
    return ModelHost(settings, registry)


def test_a_server_starts_though_another_models_index_may_not_be_read(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FRAMEWORM_SEED_DEMO (on by default) asks whether the registry is empty first: that
    question read every model's index, and one unreadable index stopped every server."""
    register("other", "1.0.0", seed=2)
    registry.promote("other", "1.0.0", "production")
    register("tiny", "1.0.0")
    registry.promote("tiny", "1.0.0", "production")
    forbid(monkeypatch, "other/index.json")
    runner = serving(registry, "tiny").prepare()
    try:
        assert runner.manifest.version == "1.0.0"
    finally:
        runner.close()
    assert registry.list_models() == ["other", "tiny"]  # nothing was seeded


def test_a_followed_switch_does_not_ask_again_whether_the_registry_is_empty(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seeding is for startup: a switch loads a version it has just read from the registry."""
    register("tiny", "1.0.0")
    manifest = register("tiny", "2.0.0", seed=2)
    registry.promote("tiny", "1.0.0", "production")
    host = serving(registry, "tiny")

    def list_nothing(store: LocalStore, prefix: str) -> list[str]:
        raise PermissionError(13, "Permission denied", str(store.root))

    monkeypatch.setattr(LocalStore, "list", list_nothing)
    runner = host.prepare(manifest)
    try:
        assert runner.manifest.version == "2.0.0"
    finally:
        runner.close()


def test_a_registry_directory_not_made_yet_is_empty(tmp_path: Path) -> None:
    assert ModelRegistry(tmp_path / "nowhere-yet").is_empty()
