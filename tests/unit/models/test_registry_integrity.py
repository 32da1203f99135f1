"""What a registry refuses to trust: manifests that lie about where they are, unreadable entries
(named, without hiding the rest), and checks that never hold a whole artefact in memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from models.errors import CorruptObjectError, IntegrityError, ModelNotFoundError
from models.registry import ModelRegistry
from models.store import sha256_file
from models.sync import DivergedError, copy_all, copy_model
from tests.unit.models.conftest import Register


def manifest_path(registry: ModelRegistry, name: str, version: str) -> Path:
    return registry.store.local_path(f"{name}/{version}/manifest.json")


def test_a_manifest_naming_another_model_is_refused_not_served_with_its_artefact(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0", seed=1)
    register("other", "2.0.0", seed=2)
    # Someone with write access points tiny 1.0.0 at other's artefact (and its sha256).
    path = manifest_path(registry, "tiny", "1.0.0")
    path.write_bytes(manifest_path(registry, "other", "2.0.0").read_bytes())
    with pytest.raises(
        CorruptObjectError, match=r"tiny/1\.0\.0/manifest\.json names other 2\.0\.0"
    ):
        registry.resolve("tiny", version="1.0.0")
    with pytest.raises(CorruptObjectError):
        registry.manifest("tiny", "1.0.0")


def test_a_manifest_naming_another_version_of_the_same_model_is_refused(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0", seed=1)
    register("tiny", "2.0.0", seed=2)
    manifest_path(registry, "tiny", "1.0.0").write_bytes(
        manifest_path(registry, "tiny", "2.0.0").read_bytes()
    )
    [old, new] = registry.verify("tiny")
    assert (old.version, old.ok) == ("1.0.0", False)
    assert "names tiny 2.0.0" in old.detail
    assert (new.version, new.ok) == ("2.0.0", True)


def test_verify_reports_an_unreadable_manifest_by_key_and_checks_the_other_versions(
    registry: ModelRegistry, register: Register
) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        register("tiny", version)
    manifest_path(registry, "tiny", "2.0.0").write_text("{broken")
    manifest_path(registry, "tiny", "3.0.0").unlink()
    results = {r.version: r for r in registry.verify("tiny")}
    assert results["1.0.0"].ok
    assert not results["2.0.0"].ok
    assert results["2.0.0"].detail.startswith("tiny/2.0.0/manifest.json is unreadable: ")
    assert "\n" not in results["2.0.0"].detail
    assert not results["3.0.0"].ok
    assert "3.0.0" in results["3.0.0"].detail


def test_verify_reports_an_unreadable_index_as_one_failed_row(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    registry.store.local_path("tiny/index.json").write_text("{broken")
    [result] = registry.verify("tiny")
    assert (result.name, result.version, result.ok) == ("tiny", None, False)
    assert result.detail.startswith("tiny/index.json is unreadable: ")


def test_an_index_naming_another_model_is_refused(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    register("other", "1.0.0", seed=2)
    path = registry.store.local_path("tiny/index.json")
    path.write_bytes(registry.store.local_path("other/index.json").read_bytes())
    with pytest.raises(CorruptObjectError, match="names model 'other'"):
        registry.index("tiny")


def test_verifying_one_version_that_is_not_registered_is_still_an_error(
    registry: ModelRegistry, register: Register
) -> None:
    register("tiny", "1.0.0")
    with pytest.raises(ModelNotFoundError):
        registry.verify("tiny", "9.9.9")


def _grow_artefact(registry: ModelRegistry, name: str, version: str, size: int) -> None:
    """Replace the artefact with `size` bytes and record their sha256, as a big model's would be."""
    manifest = registry.manifest(name, version)
    artefact = registry.store.local_path(f"{name}/{version}/{manifest.artefact}")
    with artefact.open("wb") as out:
        for _ in range(size // (1 << 20)):
            out.write(b"\x5a" * (1 << 20))
    path = manifest_path(registry, name, version)
    data = json.loads(path.read_text())
    data["sha256"], data["size_bytes"] = sha256_file(artefact), size
    path.write_text(json.dumps(data))


def _peak_bytes(run: object) -> int:
    assert callable(run)
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_verify_and_copy_hash_a_large_artefact_without_reading_it_whole(
    registry: ModelRegistry, register: Register, tmp_path: Path
) -> None:
    size = 32 << 20
    register("tiny", "1.0.0")
    _grow_artefact(registry, "tiny", "1.0.0", size)
    target = ModelRegistry(tmp_path / "target")

    assert _peak_bytes(lambda: registry.verify("tiny")) < size // 4
    assert _peak_bytes(lambda: copy_model(registry, target, "tiny")) < size // 4
    assert [r.ok for r in target.verify("tiny")] == [True]
    # Checking a present copy again is streamed too.
    assert _peak_bytes(lambda: copy_model(registry, target, "tiny")) < size // 4


def test_verify_artefact_still_refuses_changed_bytes(
    registry: ModelRegistry, register: Register
) -> None:
    manifest = register("tiny", "1.0.0")
    artefact = registry.store.local_path(f"tiny/1.0.0/{manifest.artefact}")
    artefact.write_bytes(artefact.read_bytes() + b"x")
    with pytest.raises(IntegrityError, match="corrupted or tampered"):
        registry.verify_artefact(manifest)
    artefact.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        registry.verify_artefact(manifest)


def test_an_empty_index_is_damaged_everywhere_never_a_model_that_is_not_there(
    registry: ModelRegistry, register: Register, tmp_path: Path
) -> None:
    """A zero-byte index.json (a disk that filled up, a truncating copy) made its model vanish
    from list, verify and a backup, and promote or archive call its versions unregistered."""
    register("tiny", "1.0.0")
    register("other", "1.0.0", seed=2)
    registry.store.local_path("tiny/index.json").write_bytes(b"")
    assert registry.list_models() == ["other", "tiny"]
    assert not registry.is_empty()
    [result] = registry.verify("tiny")
    assert (result.version, result.ok) == (None, False)
    assert result.detail.startswith("tiny/index.json is unreadable: ")
    with pytest.raises(CorruptObjectError, match=r"tiny/index\.json is unreadable"):
        registry.promote("tiny", "1.0.0", "staging")
    with pytest.raises(CorruptObjectError, match=r"tiny/index\.json is unreadable"):
        registry.archive("tiny", "1.0.0")
    # A backup reports it and copies the rest.
    reports = {r.name: r for r in copy_all(registry, ModelRegistry(tmp_path / "backup"))}
    assert (reports["tiny"].error or "").startswith("tiny/index.json is unreadable")
    assert reports["other"].error is None and reports["other"].versions
    assert registry.store.read("tiny/index.json") == b""  # nothing was written over it


def test_a_copy_refuses_to_merge_into_an_empty_index_instead_of_starting_a_new_one(
    registry: ModelRegistry, register: Register, tmp_path: Path
) -> None:
    register("tiny", "1.0.0")
    target = ModelRegistry(tmp_path / "target")
    copy_model(registry, target, "tiny")
    target.store.local_path("tiny/index.json").write_bytes(b"")
    with pytest.raises(CorruptObjectError, match=r"tiny/index\.json is unreadable"):
        copy_model(registry, target, "tiny")
    assert target.store.read("tiny/index.json") == b""


def test_a_copy_refuses_a_version_present_with_the_same_bytes_but_another_manifest(
    registry: ModelRegistry, register: Register, tmp_path: Path
) -> None:
    """Only the sha256 was compared: the same weights registered elsewhere under another
    signature or golden checks were reported "present", and a restore served them otherwise."""
    register("tiny", "1.0.0", seed=1, description="the source's")
    target = ModelRegistry(tmp_path / "target")
    target.register(
        "tiny",
        "1.0.0",
        registry.store.local_path("tiny/1.0.0/model.safetensors"),
        format="safetensors",
        family="mlp",
        family_config=registry.manifest("tiny", "1.0.0").family_config,
        signature=registry.manifest("tiny", "1.0.0").signature,
        deterministic=True,
    )
    with pytest.raises(DivergedError, match="has another deterministic, description"):
        copy_model(registry, target, "tiny")
    assert not target.manifest("tiny", "1.0.0").description


def test_an_artefact_of_another_size_than_registered_is_refused_unread(
    registry: ModelRegistry, register: Register
) -> None:
    """Its size is in the manifest: checked before the bytes are read (or, from S3,
    downloaded), and a manifest whose size was edited no longer passes verify."""
    register("tiny", "1.0.0", seed=1)
    manifest = registry.manifest("tiny", "1.0.0")
    path = manifest_path(registry, "tiny", "1.0.0")
    data = json.loads(path.read_text())
    data["size_bytes"] = manifest.size_bytes + 1
    path.write_text(json.dumps(data))
    edited = registry.manifest("tiny", "1.0.0")
    with pytest.raises(IntegrityError, match=f"registered as {manifest.size_bytes + 1}"):
        registry.artefact_bytes(edited)
    [result] = registry.verify("tiny", "1.0.0")
    assert not result.ok and "registered as" in result.detail
