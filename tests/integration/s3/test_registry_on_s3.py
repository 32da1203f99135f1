"""ModelRegistry over S3Store, and the registry CLI with FRAMEWORM_REGISTRY=s3://..."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.telemetry.logs import CREDENTIAL_HEADER_LOGGERS, configure_logging
from models.errors import ConflictError, IntegrityError
from models.registry import ModelRegistry
from models.s3 import S3AccessDeniedError, S3Store
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


def test_a_model_whose_objects_are_denied_is_one_unreadable_row(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another team's model under a bucket policy that refuses these credentials (403): its
    error ended `list` and `verify` for every model, and a server's start on the bucket."""
    registry = ModelRegistry(s3_url)
    register_tiny(registry, tmp_path, "1.0.0")
    artefact = write_tiny_mlp(tmp_path / "other.safetensors", seed=9)
    registry.register(
        "aaa-other",  # listed first
        "1.0.0",
        artefact,
        format="safetensors",
        family="mlp",
        family_config=TINY_CONFIG,
        signature=TINY_SIGNATURE,
    )
    read = S3Store.read

    def denied(store: S3Store, key: str) -> bytes | None:
        if key.startswith("aaa-other/"):  # what S3 answers such a read: 403
            raise S3AccessDeniedError(f"access denied to s3://{store.bucket} (AccessDenied)")
        return read(store, key)

    monkeypatch.setattr(S3Store, "read", denied)
    assert not ModelRegistry(s3_url).is_empty()  # a server on the bucket does not seed it
    env = {"FRAMEWORM_REGISTRY": s3_url}
    listed = CliRunner().invoke(cli, ["registry", "list", "--json"], env=env)
    verified = CliRunner().invoke(cli, ["registry", "verify", "--json"], env=env)
    assert (listed.exit_code, verified.exit_code) == (1, 1), (listed.output, verified.output)
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["tiny"]["status"] == "registered"
    assert rows["aaa-other"]["status"].startswith("unreadable: access denied")
    checks = {row["name"]: row["ok"] for row in json.loads(verified.output)}
    assert checks == {"aaa-other": False, "tiny": True}


@pytest.mark.parametrize("command", [["verify"], ["list"], ["pull", "--all", "--from", "{url}"]])
def test_a_mistyped_s3_prefix_is_an_error_not_an_empty_registry(
    s3_url: str, tmp_path: Path, command: list[str]
) -> None:
    """A backup's check or its restore from a mistyped prefix passed as an empty registry."""
    register_tiny(ModelRegistry(s3_url), tmp_path, "1.0.0")
    typo = s3_url.rstrip("/") + "-typo"
    args = [arg.format(url=typo) for arg in command]
    env = {"FRAMEWORM_REGISTRY": typo if command[0] != "pull" else str(tmp_path / "restored")}
    result = CliRunner().invoke(cli, ["registry", *args], env=env)
    assert result.exit_code == 1, result.output
    assert (
        result.output.strip()
        == f"error: no registry at {typo}: nothing is stored under that prefix"
    )


def test_verify_on_s3_keeps_no_copy_of_what_it_checked(s3_url: str, tmp_path: Path) -> None:
    """Each artefact checked was left in the download cache: checking a restored backup kept a
    second copy of the whole registry on the disk."""
    register_tiny(ModelRegistry(s3_url), tmp_path, "1.0.0", "1.1.0")
    checker = ModelRegistry(S3Store(s3_url, cache_dir=tmp_path / "cache"))
    assert [r.ok for r in checker.verify("tiny")] == [True, True]
    assert (tmp_path / "cache").is_dir()  # downloaded there, to be hashed
    assert list((tmp_path / "cache").rglob("*.safetensors")) == []


def test_debug_logs_carry_no_aws_credentials(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At FRAMEWORM_LOG_LEVEL=debug botocore logged every request's headers: the signature
    and the session token (IRSA's, STS's) went to the log store."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "SESSION-TOKEN-SECRET-0123")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in CREDENTIAL_HEADER_LOGGERS}
    try:
        configure_logging("json", "debug")
        ModelRegistry(S3Store(s3_url, cache_dir=tmp_path)).list_models()
        logging.getLogger("frameworm.test").debug("a debug line of the app's")
        root.handlers[0].flush()
    finally:
        root.handlers[0].close()
        root.handlers, root.level = saved
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
    out = capsys.readouterr().out
    assert "a debug line of the app's" in out
    assert "SESSION-TOKEN-SECRET" not in out and "Signature=" not in out
