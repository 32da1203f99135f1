"""`frameworm registry register` reports a model that fails its checks in one line, no traceback."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli import cli
from tests.support.artefacts import TINY_CONFIG, TINY_SIGNATURE, tiny_mlp, write_tiny_mlp


@pytest.fixture
def signature(tmp_path: Path) -> Path:
    path = tmp_path / "signature.json"
    path.write_text(TINY_SIGNATURE.model_dump_json())
    return path


def export(path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(tiny_mlp(0), (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def register(tmp_path: Path, artefact: Path, *options: str) -> tuple[int, list[str]]:
    """Run the command; return its exit code and output lines, after checking it did not crash."""
    result = CliRunner().invoke(
        cli,
        ["registry", "register", "m", "1.0.0", str(artefact), *options],
        env={"FRAMEWORM_REGISTRY": str(tmp_path / "registry")},
    )
    # An exception escaping the command is what prints a traceback outside the test runner.
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    return result.exit_code, result.output.splitlines()


def test_a_golden_input_the_model_cannot_take_fails_in_one_line(
    tmp_path: Path, signature: Path
) -> None:
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps([{"inputs": {"x": [[1, 2, 3]]}, "expected": {"y": [[0, 0, 0]]}}]))
    artefact = write_tiny_mlp(tmp_path / "m.safetensors")
    code, lines = register(
        tmp_path,
        artefact,
        f"--signature={signature}",
        f"--golden={golden}",
        "--family=mlp",
        f"--family-config={json.dumps(TINY_CONFIG)}",
    )
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("error: golden check 'golden': the model fails on its inputs")


def test_an_exported_program_whose_module_cannot_be_built_fails_in_one_line(
    tmp_path: Path, signature: Path
) -> None:
    # A program that loads but names two forward arguments for one input: torch raises while
    # building the module (program.module()), which is the artefact's fault.
    good = export(tmp_path / "m.pt2")
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("models/model.json"):
                program = json.loads(data)
                call = program["graph_module"]["module_call_graph"][0]["signature"]
                call["forward_arg_names"] = ["x", "y"]
                data = json.dumps(program).encode()
            dst.writestr(item, data)
    code, lines = register(tmp_path, bad, f"--signature={signature}")
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("error: not a loadable torch.export archive: missing a required")
