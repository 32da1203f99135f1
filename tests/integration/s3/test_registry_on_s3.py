"""ModelRegistry over S3Store, and the registry CLI with FRAMEWORM_REGISTRY=s3://..."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from models.errors import ConflictError, IntegrityError
from models.registry import ModelRegistry
from models.s3 import S3Store
from tests.support.artefacts import TINY_CONFIG, TINY_SIGNATURE, write_tiny_mlp
from tests.support.s3 import S3Server


def register_tiny(registry: ModelRegistry, tmp_path: Path, *versions: str) -> None:
    for seed, version in enumerate(versions):
        registry.register(
            "tiny",
            version,
            write_tiny_mlp(tmp_path / f"tiny-{version}.safetensors", seed=seed),
            format="safetensors",
            family="mlp",
            family_config=TINY_CONFIG,
            signature=TINY_SIGNATURE,
        )


def test_register_promote_rollback_and_verify_work_on_s3(s3_url: str, tmp_path: Path) -> None:
    registry = ModelRegistry(s3_url)
    register_tiny(registry, tmp_path, "1.0.0", "1.1.0")
    assert registry.list_models() == ["tiny"]
    registry.promote("tiny", "1.0.0", "production")
    registry.promote("tiny", "1.1.0", "production")
    assert registry.resolve("tiny").version == "1.1.0"
    index = registry.rollback("tiny")
    assert index.aliases["production"] == "1.0.0"
    assert [r.ok for r in registry.verify("tiny")] == [True, True]
    assert registry.load(registry.resolve("tiny")).manifest.version == "1.0.0"


def test_a_tampered_remote_artefact_is_refused(
    s3_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    registry = ModelRegistry(s3_url)
    register_tiny(registry, tmp_path, "1.0.0")
    manifest = registry.manifest("tiny", "1.0.0")
    registry.artefact_bytes(manifest)  # a genuine copy is now in the cache
    store = registry.store
    assert isinstance(store, S3Store)
    s3_server.client().put_object(
        Bucket=store.bucket,
        Key=f"{store.prefix}/tiny/1.0.0/{manifest.artefact}",
        Body=b"not the registered weights",
    )
    with pytest.raises(IntegrityError, match="tampered"):
        registry.load(manifest)
    assert not registry.verify("tiny")[0].ok


def test_of_two_racing_promotions_from_one_revision_exactly_one_wins(
    s3_url: str, tmp_path: Path
) -> None:
    register_tiny(ModelRegistry(s3_url), tmp_path, "1.0.0", "2.0.0")
    revision = ModelRegistry(s3_url).index("tiny").revision
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def promote(version: str) -> None:
        registry = ModelRegistry(s3_url)
        barrier.wait()
        try:
            registry.promote("tiny", version, "production", expected_revision=revision)
            outcomes[version] = "won"
        except ConflictError:
            outcomes[version] = "lost"

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("1.0.0", "2.0.0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["lost", "won"]
    winner = next(v for v, outcome in outcomes.items() if outcome == "won")
    index = ModelRegistry(s3_url).index("tiny")
    assert index.aliases["production"] == winner
    assert index.revision == revision + 1


def test_the_registry_cli_works_against_an_s3_registry(s3_url: str) -> None:
    runner = CliRunner()
    env = {"FRAMEWORM_REGISTRY": s3_url}

    def run(*args: str) -> str:
        result = runner.invoke(cli, ["registry", *args], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    assert "registered" in run("seed-demo")
    rows = json.loads(run("list", "--json"))
    assert {"name": "cnn-digits", "version": "1.0.0", "status": "production"} in rows
    assert "sha256 ok" in run("verify", "cnn-digits")
    assert "production -> 1.0.0" in run("promote", "cnn-digits", "1.0.0", "production")
    assert json.loads(run("show", "cnn-digits", "--json"))["version"] == "1.0.0"
    assert "promote" in run("history", "cnn-digits")


def test_the_cli_names_a_missing_bucket_in_one_line(s3_env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        cli, ["registry", "list"], env={"FRAMEWORM_REGISTRY": "s3://no-such-bucket/r"}
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: S3 bucket 'no-such-bucket' does not exist"
    ]
