"""Finishing a registration that stopped midway (its manifest stored, its index never written):
only the same registration finishes it; any other manifest is refused, naming what differs."""

from __future__ import annotations

import pytest

from models.errors import ConflictError, VersionExistsError
from models.registry import ModelRegistry
from models.store import LocalStore
from tests.support.artefacts import TINY_CONFIG
from tests.unit.models.conftest import Register


@pytest.fixture
def unfinished(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiny 1.0.0 (seed 1, TINY_CONFIG, description "first try"), stopped before the index."""

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("the registration was killed before its index write")

    with monkeypatch.context() as patch:
        patch.setattr(registry, "_update", crash)
        with pytest.raises(KeyboardInterrupt):
            register("tiny", "1.0.0", description="first try")
    assert registry.list_models() == []
    assert registry.store.read("tiny/1.0.0/manifest.json") is not None


@pytest.mark.usefixtures("unfinished")
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"description": "second try"}, "description"),
        ({"family_config": {**TINY_CONFIG, "softmax": True}}, "family_config"),
        ({"deterministic": True, "metadata": {"run": 7}}, "deterministic, metadata"),
    ],
    ids=["description", "family-config", "two-fields"],
)
def test_registering_it_again_with_another_manifest_is_refused_naming_what_differs(
    registry: ModelRegistry, register: Register, changes: dict[str, object], named: str
) -> None:
    with pytest.raises(
        VersionExistsError, match=rf"stored another {named}; unless it is still running"
    ):
        register("tiny", "1.0.0", **{"description": "first try", **changes})
    assert registry.list_models() == []  # still unfinished, and still the first manifest
    assert registry.manifest("tiny", "1.0.0").description == "first try"


@pytest.mark.usefixtures("unfinished")
def test_registering_it_again_with_other_bytes_names_them(
    registry: ModelRegistry, register: Register
) -> None:
    with pytest.raises(
        VersionExistsError, match=r"stored another sha256; unless it is still running"
    ):
        register("tiny", "1.0.0", seed=2, description="first try")


@pytest.mark.usefixtures("unfinished")
def test_registering_it_again_as_it_was_finishes_it_whoever_does_it(
    registry: ModelRegistry, register: Register
) -> None:
    stored = registry.manifest("tiny", "1.0.0")
    manifest = register("tiny", "1.0.0", description="first try", actor="someone-else")
    assert manifest == stored  # who registered it, and when, are the first attempt's
    assert registry.index("tiny").versions == ["1.0.0"]
    assert registry.resolve("tiny", version="1.0.0") == stored


def test_a_family_config_given_with_tuples_matches_the_lists_stored(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored as JSON, a tuple reads back as a list: not a difference."""
    config = {key: tuple(v) if isinstance(v, list) else v for key, v in TINY_CONFIG.items()}
    real_swap = LocalStore.swap

    def lose_index(store: LocalStore, key: str, data: bytes, expected: bytes | None) -> bool:
        return False if key.endswith("index.json") else real_swap(store, key, data, expected)

    with monkeypatch.context() as patch:
        patch.setattr(LocalStore, "swap", lose_index)
        with pytest.raises(ConflictError, match="register it again"):
            register("tiny", "1.0.0", family_config=config)
    register("tiny", "1.0.0", family_config=config)
    assert registry.index("tiny").versions == ["1.0.0"]
