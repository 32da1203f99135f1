from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from models.errors import (
    ArtefactError,
    ConflictError,
    GoldenCheckError,
    IntegrityError,
    InvalidNameError,
    ModelNotFoundError,
    StageError,
    VersionExistsError,
)
from models.formats import load_model
from models.manifest import GoldenCheck, version_key
from models.registry import ModelRegistry
from models.stages import StageEvent
from models.store import LocalStore
from tests.support.artefacts import TINY_CONFIG, TINY_SIGNATURE, tiny_mlp, write_tiny_mlp
from tests.unit.models.conftest import Register


def test_a_registered_version_is_listed_with_its_sha256_and_signature(
    registry: ModelRegistry, register: Register
) -> None:
    manifest = register("tiny", "1.0.0")
    assert registry.list_models() == ["tiny"]
    assert registry.index("tiny").versions == ["1.0.0"]
    assert len(manifest.sha256) == 64
    assert registry.manifest("tiny", "1.0.0") == manifest
    assert registry.index("tiny").status("1.0.0") == "registered"


def test_versions_are_ordered_by_semver_not_by_text(
    registry: ModelRegistry, register: Register
) -> None:
    for version in ("1.10.0", "1.2.0", "1.2.0-rc.1"):
        register("tiny", version)
    assert registry.index("tiny").versions == ["1.2.0-rc.1", "1.2.0", "1.10.0"]


def test_pre_releases_are_ordered_by_their_identifiers_as_semver_says() -> None:
    ordered = [
        "1.0.0-1",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.2",
        "1.0.0-alpha.10",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    assert sorted(reversed(ordered), key=version_key) == ordered


def test_a_version_cannot_be_registered_twice(register: Register) -> None:
    register("tiny", "1.0.0")
    with pytest.raises(VersionExistsError):
        register("tiny", "1.0.0")


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "", "UPPER", "x..y", "a b", ".hidden"])
def test_names_that_could_escape_the_root_are_refused(register: Register, name: str) -> None:
    with pytest.raises(InvalidNameError):
        register(name, "1.0.0")


@pytest.mark.parametrize(
    "version",
    ["1.0", "v1.0.0", "../1.0.0", "1.0.0/..", "01.0.0", "1.0.0-alpha.01", "\u0661.0.0", "1.0.0-"],
)
def test_versions_that_are_not_semver_are_refused(register: Register, version: str) -> None:
    with pytest.raises(InvalidNameError):
        register("tiny", version)


def test_promotion_to_production_archives_the_previous_version_and_clears_staging(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    register("tiny", "2.0.0")
    registry.promote("tiny", "1.0.0", "production")
    registry.promote("tiny", "2.0.0", "staging")
    index = registry.promote("tiny", "2.0.0", "production", reason="better")
    assert index.aliases == {"staging": None, "production": "2.0.0"}
    assert index.archived == ["1.0.0"]
    last = index.history[-1]
    assert (last.action, last.version, last.from_version, last.reason) == (
        "promote",
        "2.0.0",
        "1.0.0",
        "better",
    )
    assert registry.resolve("tiny").version == "2.0.0"


def test_rollback_returns_to_the_previous_version_not_the_oldest(
    registry: ModelRegistry, register: Register
) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        register("tiny", version)
        registry.promote("tiny", version, "production")
    index = registry.rollback("tiny")
    assert index.aliases["production"] == "2.0.0"
    assert "3.0.0" in index.archived
    assert registry.rollback("tiny").aliases["production"] == "1.0.0"
    with pytest.raises(StageError, match="no earlier production version"):
        registry.rollback("tiny")


def test_staging_does_not_roll_back_onto_the_version_production_took_from_it(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    register("tiny", "1.1.0")
    registry.promote("tiny", "1.0.0", "staging")
    registry.promote("tiny", "1.0.0", "production")  # clears staging
    registry.promote("tiny", "1.1.0", "staging")
    with pytest.raises(StageError, match="no earlier staging version"):
        registry.rollback("tiny", "staging")
    assert registry.index("tiny").aliases == {"staging": "1.1.0", "production": "1.0.0"}


def test_an_archived_version_can_be_promoted_again(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    register("tiny", "2.0.0")
    registry.promote("tiny", "1.0.0", "production")
    registry.promote("tiny", "2.0.0", "production")
    assert registry.index("tiny").status("1.0.0") == "archived"
    index = registry.promote("tiny", "1.0.0", "production")
    assert index.aliases["production"] == "1.0.0"
    assert index.archived == ["2.0.0"]


def test_only_one_version_is_ever_in_production(
    registry: ModelRegistry, register: Register
) -> None:
    for version in ("1.0.0", "2.0.0"):
        register("tiny", version)
        registry.promote("tiny", version, "production")
    index = registry.index("tiny")
    assert [v for v in index.versions if index.status(v) == "production"] == ["2.0.0"]


def test_the_production_version_cannot_be_archived(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    registry.promote("tiny", "1.0.0", "production")
    with pytest.raises(StageError, match="in production"):
        registry.archive("tiny", "1.0.0")


def test_archiving_a_staging_version_clears_staging(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    registry.promote("tiny", "1.0.0", "staging")
    index = registry.archive("tiny", "1.0.0")
    assert index.aliases["staging"] is None
    assert index.status("1.0.0") == "archived"


def test_a_stale_expected_revision_loses_and_writes_nothing(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    register("tiny", "2.0.0")
    revision = registry.index("tiny").revision
    registry.promote("tiny", "1.0.0", "production", expected_revision=revision)
    with pytest.raises(ConflictError):
        registry.promote("tiny", "2.0.0", "production", expected_revision=revision)
    assert registry.index("tiny").aliases["production"] == "1.0.0"


def test_unknown_models_versions_and_stages_are_reported(
    registry: ModelRegistry, register: Register
) -> None:
    with pytest.raises(ModelNotFoundError):
        registry.index("nope")
    register("tiny", "1.0.0")
    with pytest.raises(ModelNotFoundError, match=r"version 9\.0\.0"):
        registry.promote("tiny", "9.0.0", "production")
    with pytest.raises(ModelNotFoundError, match="production version"):
        registry.resolve("tiny")
    with pytest.raises(StageError):
        registry.promote("tiny", "1.0.0", "canary")  # type: ignore[arg-type]


def test_a_tampered_artefact_is_refused_with_a_message_that_says_so(
    registry: ModelRegistry, register: Register, tmp_path: Path
) -> None:
    manifest = register("tiny", "1.0.0")
    stored = tmp_path / "registry" / "tiny" / "1.0.0" / manifest.artefact
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="tampered"):
        registry.load(manifest)
    [result] = registry.verify("tiny")
    assert not result.ok
    assert "does not match" in result.detail


def test_a_missing_artefact_is_reported_as_missing(
    registry: ModelRegistry, register: Register, tmp_path: Path
) -> None:
    manifest = register("tiny", "1.0.0")
    (tmp_path / "registry" / "tiny" / "1.0.0" / manifest.artefact).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        registry.load(manifest)


def test_a_loaded_version_computes_what_the_original_module_computes(
    registry: ModelRegistry, register: Register
) -> None:
    manifest = register("tiny", "1.0.0")
    x = torch.randn(5, 4)
    [y] = registry.load(manifest).forward([x])
    torch.testing.assert_close(y, tiny_mlp(seed=1)(x))


def test_registration_runs_golden_checks_and_refuses_a_wrong_expectation(
    register: Register,
) -> None:
    x = [[0.1, 0.2, 0.3, 0.4]]
    expected = tiny_mlp(seed=1)(torch.tensor(x)).tolist()
    good = GoldenCheck(inputs={"x": x}, expected={"y": expected})
    assert register("tiny", "1.0.0", golden=(good,)).golden == (good,)
    bad = GoldenCheck(name="off", inputs={"x": x}, expected={"y": [[9.0, 9.0, 9.0]]})
    with pytest.raises(GoldenCheckError, match="'off'"):
        register("tiny", "2.0.0", golden=(bad,))


Y = {"y": [[0.0, 0.0, 0.0]]}  # an expectation the checks below never get to compare


@pytest.mark.parametrize(
    ("golden", "message"),
    [
        (GoldenCheck(name="narrow", inputs={"x": [[1.0, 2.0, 3.0]]}, expected=Y), "fails on"),
        (GoldenCheck(name="typed", inputs={"x": {"a": 1}}, expected=Y), "bad input"),
        (GoldenCheck(name="ragged", inputs={"x": [[0.0] * 4]}, expected={"y": [[1], []]}), "bad"),
    ],
    ids=["model-raises", "input-not-a-list", "expected-ragged"],
)
def test_a_golden_check_the_model_cannot_run_fails_as_a_golden_check_error(
    register: Register, golden: GoldenCheck, message: str
) -> None:
    # Model code raising (here a 3-feature input into a 4-feature layer) is the check failing,
    # reported in one line, not an exception from inside torch.
    with pytest.raises(GoldenCheckError, match=f"{golden.name!r}.*{message}") as caught:
        register("tiny", "1.0.0", golden=(golden,))
    assert "\n" not in str(caught.value)


def test_weights_that_do_not_fit_the_family_are_refused(register: Register) -> None:
    with pytest.raises(ArtefactError, match="do not fit"):
        register("tiny", "1.0.0", family_config={**TINY_CONFIG, "hidden": [16]})


def test_an_output_shape_that_contradicts_the_signature_is_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    wrong = TINY_SIGNATURE.model_copy(
        update={"outputs": (TINY_SIGNATURE.outputs[0].model_copy(update={"shape": (-1, 7)}),)}
    )
    with pytest.raises(ArtefactError, match="signature says"):
        registry.register(
            "tiny",
            "1.0.0",
            write_tiny_mlp(tmp_path / "w.safetensors"),
            format="safetensors",
            family="mlp",
            family_config=TINY_CONFIG,
            signature=wrong,
        )


def test_a_failed_registration_leaves_no_version_behind(
    registry: ModelRegistry, register: Register
) -> None:
    with pytest.raises(ArtefactError):
        register("tiny", "1.0.0", family_config={**TINY_CONFIG, "hidden": [16]})
    assert registry.list_models() == []
    register("tiny", "1.0.0")
    assert registry.index("tiny").versions == ["1.0.0"]


def test_a_registration_that_loses_the_index_race_tries_again(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    register("tiny", "1.0.0")
    real_swap = LocalStore.swap
    raced: list[str] = []

    def swap(store: LocalStore, key: str, data: bytes, expected: bytes | None) -> bool:
        if key == "tiny/index.json" and not raced:
            raced.append(key)  # another writer changes the index between our read and swap
            ModelRegistry(store.root).promote("tiny", "1.0.0", "production")
        return real_swap(store, key, data, expected)

    monkeypatch.setattr(LocalStore, "swap", swap)
    register("tiny", "1.1.0")
    index = registry.index("tiny")
    assert raced
    assert index.versions == ["1.0.0", "1.1.0"]
    assert index.aliases["production"] == "1.0.0"
    assert registry.promote("tiny", "1.1.0", "staging").aliases["staging"] == "1.1.0"


def test_an_unfinished_registration_is_not_served_and_registering_it_again_finishes_it(
    registry: ModelRegistry, register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    register("tiny", "1.0.0")
    real_swap = LocalStore.swap

    def lose_index(store: LocalStore, key: str, data: bytes, expected: bytes | None) -> bool:
        return False if key.endswith("index.json") else real_swap(store, key, data, expected)

    monkeypatch.setattr(LocalStore, "swap", lose_index)
    with pytest.raises(ConflictError, match="register it again"):
        register("tiny", "1.1.0", seed=2)
    monkeypatch.setattr(LocalStore, "swap", real_swap)
    # Its manifest and artefact are stored, but the index does not list it: not registered.
    assert registry.manifest("tiny", "1.1.0").version == "1.1.0"
    with pytest.raises(ModelNotFoundError, match=r"version 1\.1\.0"):
        registry.resolve("tiny", version="1.1.0")
    with pytest.raises(ModelNotFoundError):
        registry.verify("tiny", "1.1.0")
    with pytest.raises(ModelNotFoundError):
        registry.promote("tiny", "1.1.0", "staging")
    with pytest.raises(VersionExistsError):
        register("tiny", "1.1.0", seed=3)  # other bytes: it may still be finishing
    manifest = register("tiny", "1.1.0", seed=2)
    assert registry.index("tiny").versions == ["1.0.0", "1.1.0"]
    assert registry.resolve("tiny", version="1.1.0") == manifest
    assert [r.ok for r in registry.verify("tiny", "1.1.0")] == [True]
    registry.promote("tiny", "1.1.0", "staging")
    with pytest.raises(VersionExistsError):
        register("tiny", "1.1.0", seed=2)


def test_the_bytes_hashed_are_the_bytes_checked_and_stored(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write_tiny_mlp(tmp_path / "w.safetensors", seed=1)

    def load_then_change_the_file(*args: object, **kwargs: object) -> object:
        model = load_model(*args, **kwargs)  # type: ignore[arg-type]
        write_tiny_mlp(path, seed=2)  # the file is replaced while it is being registered
        return model

    monkeypatch.setattr("models.registry.load_model", load_then_change_the_file)
    manifest = registry.register(
        "tiny",
        "1.0.0",
        path,
        format="safetensors",
        family="mlp",
        family_config=TINY_CONFIG,
        signature=TINY_SIGNATURE,
    )
    monkeypatch.undo()
    x = torch.randn(2, 4)
    [y] = registry.load(manifest).forward([x])  # IntegrityError if other bytes were stored
    torch.testing.assert_close(y, tiny_mlp(seed=1)(x))


def test_promoting_the_current_target_again_changes_nothing(
    registry: ModelRegistry, register: Register
) -> None:
    for version in ("1.0.0", "1.1.0"):
        register("tiny", version)
        registry.promote("tiny", version, "production")
    before = registry.index("tiny")
    assert registry.promote("tiny", "1.1.0", "production") == before
    assert registry.index("tiny") == before
    index = registry.rollback("tiny")
    assert index.aliases["production"] == "1.0.0"
    assert (index.history[-1].from_version, index.history[-1].version) == ("1.1.0", "1.0.0")


def test_rollback_skips_repeated_promotions_in_an_older_history(
    registry: ModelRegistry, register: Register
) -> None:
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        register("tiny", version)
    registry.promote("tiny", "1.0.0", "production")
    registry.promote("tiny", "1.1.0", "production")
    # As written before a repeated promotion became a no-op:
    index = registry.index("tiny")
    index.history.append(
        StageEvent(
            actor="a", action="promote", version="1.1.0", stage="production", from_version="1.1.0"
        )
    )
    registry.store.put_bytes("tiny/index.json", index.model_dump_json().encode())
    assert registry.rollback("tiny").aliases["production"] == "1.0.0"
    registry.promote("tiny", "2.0.0", "production")
    assert registry.rollback("tiny").aliases["production"] == "1.0.0"


def test_registry_files_get_the_umask_mode_so_another_user_can_read_them(
    registry: ModelRegistry, register: Register
) -> None:
    old = os.umask(0o022)
    try:
        manifest = register("tiny", "1.0.0")
    finally:
        os.umask(old)
    root = Path(registry.store.url)
    for path in ("tiny/index.json", "tiny/1.0.0/manifest.json", f"tiny/1.0.0/{manifest.artefact}"):
        assert stat.S_IMODE((root / path).stat().st_mode) == 0o644, path


class _Noisy(torch.nn.Module):
    """The tiny MLP with dropout left on: random, yet zero inputs give zeros every time."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = tiny_mlp(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(torch.nn.functional.dropout(x, 0.5, training=True))
        return out


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_model_declared_deterministic_must_answer_one_input_alike_twice(
    registry: ModelRegistry, tmp_path: Path, deterministic: bool
) -> None:
    """Its answers are cached and replayed: a random model declared deterministic would
    replay one draw for good."""
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(_Noisy(), (torch.ones(2, 4),), dynamic_shapes=({0: batch},))
    path = tmp_path / "noisy.pt2"
    torch.export.save(program, path)

    def register() -> object:
        return registry.register(
            "noisy",
            "1.0.0",
            path,
            format="torch_export",
            signature=TINY_SIGNATURE,
            deterministic=deterministic,
        )

    if deterministic:
        with pytest.raises(ArtefactError, match="differs between two runs"):
            register()
    else:
        register()


def test_a_deterministic_model_is_registered_as_such(register: Register) -> None:
    assert register("tiny", "1.0.0", deterministic=True).deterministic
