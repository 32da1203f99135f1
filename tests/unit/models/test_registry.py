from __future__ import annotations

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
from models.manifest import GoldenCheck
from models.registry import ModelRegistry
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


def test_a_version_cannot_be_registered_twice(register: Register) -> None:
    register("tiny", "1.0.0")
    with pytest.raises(VersionExistsError):
        register("tiny", "1.0.0")


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "", "UPPER", "x..y", "a b", ".hidden"])
def test_names_that_could_escape_the_root_are_refused(register: Register, name: str) -> None:
    with pytest.raises(InvalidNameError):
        register(name, "1.0.0")


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "../1.0.0", "1.0.0/..", "01.0.0"])
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
