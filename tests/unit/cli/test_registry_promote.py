"""`frameworm registry promote` says when running servers will not follow the promotion."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner, Result

from app.cli import cli
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_SIGNATURE, write_tiny_mlp
from tests.support.models import MODEL, register_mlp


def promote(registry: ModelRegistry, version: str) -> Result:
    url = f"--registry={registry.store.url}"
    return CliRunner().invoke(cli, ["registry", "promote", MODEL, version, "production", url])


def test_a_promotion_to_another_signature_warns_that_servers_keep_the_old_version(
    tmp_path: Path,
) -> None:
    """Servers refuse to switch live to it (their clients' requests would break) and say so in
    their logs only: the operator who promoted it was told nothing."""
    registry = ModelRegistry(tmp_path / "registry")
    register_mlp(registry, "1.0.0", tmp_path, seed=0)
    registry.promote(MODEL, "1.0.0", "production")
    renamed = TINY_SIGNATURE.outputs[0].model_copy(update={"name": "scores"})
    registry.register(
        MODEL,
        "2.0.0",
        write_tiny_mlp(tmp_path / "renamed.safetensors", 1),
        format="safetensors",
        signature=TINY_SIGNATURE.model_copy(update={"outputs": (renamed,)}),
        family="mlp",
        family_config={"in_features": 4, "hidden": [8], "out_features": 3, "softmax": False},
    )
    result = promote(registry, "2.0.0")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{MODEL}: production -> 2.0.0\n"
    assert result.stderr == (
        "warning: 2.0.0's inputs or outputs differ from 1.0.0's: running servers keep serving "
        "1.0.0; roll out a new deployment to serve 2.0.0\n"
    )
    assert registry.index(MODEL).aliases["production"] == "2.0.0"


def test_a_promotion_with_the_same_signature_warns_of_nothing(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for seed, version in enumerate(("1.0.0", "2.0.0")):
        register_mlp(registry, version, tmp_path, seed=seed)
    registry.promote(MODEL, "1.0.0", "production")
    for _ in range(2):  # a move, then one to where it is already
        result = promote(registry, "2.0.0")
        assert (result.exit_code, result.stderr) == (0, ""), result.output


def test_a_promotion_away_from_a_version_whose_manifest_is_broken_succeeds_with_a_warning(
    tmp_path: Path,
) -> None:
    """The move was written, then the signature comparison failed reading the old manifest:
    exit 1 for a promotion that took effect (an emergency one, away from a broken version)."""
    registry = ModelRegistry(tmp_path / "registry")
    for seed, version in enumerate(("1.0.0", "2.0.0")):
        register_mlp(registry, version, tmp_path, seed=seed)
    registry.promote(MODEL, "1.0.0", "production")
    (Path(registry.store.url) / MODEL / "1.0.0" / "manifest.json").write_text("{broken")
    result = promote(registry, "2.0.0")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{MODEL}: production -> 2.0.0\n"
    assert result.stderr.startswith(
        "warning: cannot compare 2.0.0's inputs and outputs with 1.0.0's"
    )
    assert registry.index(MODEL).aliases["production"] == "2.0.0"
