"""push / pull between a local registry and S3: verified copies, merged indexes, the CLI forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from models.demo import seed_demo
from models.errors import IntegrityError, StageError
from models.registry import ModelRegistry
from models.s3 import S3Store
from models.sync import DivergedError, copy_all, pull, push
from tests.integration.s3.test_registry_on_s3 import register_tiny
from tests.support.s3 import S3Server


@pytest.fixture
def local(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "local")
    register_tiny(registry, tmp_path, "1.0.0", "1.1.0")
    registry.promote("tiny", "1.0.0", "production")
    registry.promote("tiny", "1.1.0", "production")
    return registry


def test_push_then_pull_round_trips_versions_verified(
    local: ModelRegistry, s3_url: str, tmp_path: Path
) -> None:
    remote = ModelRegistry(s3_url)
    report = push(local, remote, "tiny")
    assert [(c.version, c.action) for c in report.versions] == [
        ("1.0.0", "copied"),
        ("1.1.0", "copied"),
    ]
    elsewhere = ModelRegistry(tmp_path / "elsewhere")
    pull(remote, elsewhere, "tiny", "1.1.0")
    assert elsewhere.index("tiny").versions == ["1.1.0"]
    assert elsewhere.manifest("tiny", "1.1.0") == local.manifest("tiny", "1.1.0")
    verified = elsewhere.verify("tiny")
    assert verified and all(r.ok for r in verified)


def test_a_copy_moves_no_alias_unless_asked(local: ModelRegistry, s3_url: str) -> None:
    remote = ModelRegistry(s3_url)
    assert push(local, remote, "tiny").stage_moves == []
    assert remote.index("tiny").aliases["production"] is None
    moves = push(local, remote, "tiny", stages=True).stage_moves
    assert [(e.stage, e.version) for e in moves] == [("production", "1.1.0")]
    index = remote.index("tiny")
    assert index.aliases["production"] == "1.1.0"
    assert index.archived == ["1.0.0"]
    assert index.history[-1].reason == f"copied from {local.store.url}"


def test_a_repeated_push_copies_nothing_and_writes_nothing(
    local: ModelRegistry, s3_url: str
) -> None:
    remote = ModelRegistry(s3_url)
    push(local, remote, "tiny", stages=True)
    revision = remote.index("tiny").revision
    again = push(local, remote, "tiny", stages=True)
    assert {c.action for c in again.versions} == {"present"}
    assert again.stage_moves == []
    assert remote.index("tiny").revision == revision


def test_a_damaged_remote_copy_is_repaired_by_the_next_push(
    local: ModelRegistry, s3_url: str, s3_server: S3Server
) -> None:
    remote = ModelRegistry(s3_url)
    push(local, remote, "tiny", "1.0.0")
    store = remote.store
    assert isinstance(store, S3Store)
    key = f"{store.prefix}/tiny/1.0.0/model.safetensors"
    s3_server.client().put_object(Bucket=store.bucket, Key=key, Body=b"damaged")
    assert [c.action for c in push(local, remote, "tiny", "1.0.0").versions] == ["repaired"]
    assert remote.verify("tiny", "1.0.0")[0].ok


def test_a_tampered_source_artefact_is_not_copied(
    local: ModelRegistry, s3_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    remote = ModelRegistry(s3_url)
    push(local, remote, "tiny", "1.0.0")
    store = remote.store
    assert isinstance(store, S3Store)
    key = f"{store.prefix}/tiny/1.0.0/model.safetensors"
    s3_server.client().put_object(Bucket=store.bucket, Key=key, Body=b"tampered")
    with pytest.raises(IntegrityError, match="tampered"):
        pull(remote, ModelRegistry(tmp_path / "fresh"), "tiny")


def test_the_same_version_with_other_bytes_is_refused(
    local: ModelRegistry, s3_url: str, tmp_path: Path
) -> None:
    remote = ModelRegistry(s3_url)
    push(local, remote, "tiny", "1.0.0")
    other = ModelRegistry(tmp_path / "other")
    register_tiny(other, tmp_path, "9.9.9", "1.0.0")  # seed 1: other weights
    with pytest.raises(DivergedError, match="versions are immutable"):
        push(other, remote, "tiny", "1.0.0")


def test_the_cli_backup_and_restore_forms(s3_url: str, tmp_path: Path) -> None:
    source = tmp_path / "served"
    seed_demo(ModelRegistry(source))
    runner = CliRunner()

    def run(*args: str, registry: Path) -> str:
        result = runner.invoke(cli, ["registry", *args], env={"FRAMEWORM_REGISTRY": str(registry)})
        assert result.exit_code == 0, result.output
        return result.output

    run("push", "--all", "--to", s3_url, registry=source)
    restored = tmp_path / "restored"
    run("pull", "--all", "--from", s3_url, registry=restored)
    original, copy = ModelRegistry(source), ModelRegistry(restored)
    assert copy.list_models() == original.list_models()
    for name in original.list_models():
        assert copy.index(name).aliases == original.index(name).aliases
    assert copy.resolve("cnn-digits").sha256 == original.resolve("cnn-digits").sha256

    single = tmp_path / "single"
    out = run("pull", "cnn-digits", "1.0.0", "--from", s3_url, "--json", registry=single)
    assert json.loads(out)[0]["versions"] == [{"version": "1.0.0", "action": "copied"}]
    assert ModelRegistry(single).index("cnn-digits").aliases["production"] is None
    assert "present" in run("push", "cnn-digits", "--to", s3_url, registry=source)


def _cached_artefacts(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("model.*") if not p.name.endswith(".lock"))


def test_a_pull_from_s3_leaves_no_second_copy_of_the_artefacts_in_the_cache(
    local: ModelRegistry, s3_url: str, tmp_path: Path
) -> None:
    push(local, ModelRegistry(s3_url), "tiny")
    cache = tmp_path / "pull-cache"
    source = ModelRegistry(S3Store(s3_url, cache_dir=cache))
    target = ModelRegistry(tmp_path / "pulled")
    report = pull(source, target, "tiny")
    assert [c.action for c in report.versions] == ["copied", "copied"]
    assert [r.ok for r in target.verify("tiny")] == [True, True]
    assert _cached_artefacts(cache) == []
    # The cache still works for loading (serving from S3) after its copy was dropped.
    manifest = source.resolve("tiny", version="1.0.0")
    assert len(source.artefact_bytes(manifest)) == manifest.size_bytes
    assert _cached_artefacts(cache) == ["model.safetensors", "model.safetensors.etag.json"]


def test_forgetting_an_object_that_was_never_cached_does_nothing(
    s3_url: str, tmp_path: Path
) -> None:
    store = S3Store(s3_url, cache_dir=tmp_path / "cache")
    store.forget_local_copy("tiny/1.0.0/model.safetensors")
    assert not (tmp_path / "cache").exists()


def test_the_cli_pull_drops_the_cached_copies(
    local: ModelRegistry, s3_url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    push(local, ModelRegistry(s3_url), "tiny")
    cache = Path(s3_env["XDG_CACHE_HOME"])
    for path in cache.rglob("model.*"):  # what the push's own check of the remote cached
        path.unlink()
    result = CliRunner().invoke(
        cli,
        ["registry", "pull", "tiny", "--from", s3_url],
        env={"FRAMEWORM_REGISTRY": str(tmp_path / "pulled")},
    )
    assert result.exit_code == 0, result.output
    assert _cached_artefacts(cache) == []


def test_a_backup_and_restore_keep_the_history_so_rollback_still_works(
    local: ModelRegistry, s3_url: str, tmp_path: Path
) -> None:
    """A restore used to hold only 'copied from' events: 'no earlier production version'."""
    backup = ModelRegistry(s3_url)
    [report] = copy_all(local, backup, stages=True)
    assert [(e.stage, e.version) for e in report.stage_moves] == [("production", "1.1.0")]
    restored = ModelRegistry(tmp_path / "restored")
    copy_all(backup, restored, stages=True)
    for copy in (backup, restored):
        assert copy.index("tiny").history == local.index("tiny").history
        assert copy.index("tiny").aliases == local.index("tiny").aliases
    restored.rollback("tiny")
    assert restored.resolve("tiny").version == "1.0.0"


def test_a_backup_to_s3_leaves_no_copy_of_the_artefacts_in_the_cache(
    local: ModelRegistry, s3_url: str, tmp_path: Path
) -> None:
    """The backup checks each artefact it sent (or found) through a download: it was kept, so
    the backup job's disk held the whole registry."""
    cache = tmp_path / "backup-cache"
    target = ModelRegistry(S3Store(s3_url, cache_dir=cache))
    assert [c.action for c in push(local, target, "tiny").versions] == ["copied", "copied"]
    assert _cached_artefacts(cache) == []
    assert [c.action for c in push(local, target, "tiny").versions] == ["present", "present"]
    assert _cached_artefacts(cache) == []


def test_nightly_backups_keep_following_the_history_so_a_restore_rolls_back_like_the_source(
    local: ModelRegistry, s3_url: str, tmp_path: Path
) -> None:
    """Later backups recorded a source rollback as a promotion: a restore then 'rolled back'
    to the very version the operator had rolled away from."""
    backup = ModelRegistry(s3_url)
    copy_all(local, backup, stages=True)
    local.rollback("tiny")  # production back to 1.0.0: nothing earlier is left
    [report] = copy_all(local, backup, stages=True)
    assert [(e.stage, e.version) for e in report.stage_moves] == [("production", "1.0.0")]
    assert copy_all(local, backup, stages=True)[0].stage_moves == []  # in step: nothing written
    restored = ModelRegistry(tmp_path / "restored")
    copy_all(backup, restored, stages=True)
    assert restored.index("tiny").history == local.index("tiny").history
    assert restored.resolve("tiny").version == "1.0.0"
    with pytest.raises(StageError, match="no earlier production version"):
        restored.rollback("tiny")


def test_a_target_with_a_history_of_its_own_is_merged_not_replaced(
    local: ModelRegistry, s3_url: str, tmp_path: Path
) -> None:
    backup = ModelRegistry(s3_url)
    copy_all(local, backup, stages=True)
    backup.promote("tiny", "1.1.0", "staging", reason="the backup's own move")
    local.rollback("tiny")
    copy_all(local, backup, stages=True)
    history = backup.index("tiny").history
    assert any(e.reason == "the backup's own move" for e in history)
    assert history[-1].reason == f"copied from {local.store.url}"
    assert backup.resolve("tiny").version == "1.0.0"
