"""`frameworm registry register` reports a model that fails its checks in one line, no traceback."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
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


def register_tiny_mlp(
    tmp_path: Path, signature: Path, golden: Mapping[str, object], *options: str
) -> tuple[int, list[str]]:
    """`register` of the tiny MLP with one golden check."""
    path = tmp_path / "golden.json"
    path.write_text(json.dumps([golden]))
    return register(
        tmp_path,
        write_tiny_mlp(tmp_path / "m.safetensors"),
        f"--signature={signature}",
        f"--golden={path}",
        "--family=mlp",
        f"--family-config={json.dumps(TINY_CONFIG)}",
        *options,
    )


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


@pytest.mark.parametrize(
    ("golden", "metadata", "message"),
    [
        (
            {"name": "typo", "inputs": {"x": [[1, 2, 3, 4]]}, "expected": {"Y": [[9, 9, 9]]}},
            "{}",
            "golden check 'typo': the signature has no output 'Y' (its outputs: y)",
        ),
        (
            {"name": "none", "inputs": {"x": [[1, 2, 3, 4]]}, "expected": {}},
            "{}",
            "golden check 'none': 'expected' names no output, so the check would compare nothing",
        ),
        (
            {"inputs": {"x": [[1, 2, 3, 4]]}, "expected": {"y": [[0, 0, 0]]}},
            '{"score": NaN}',
            "metadata.score is nan: a manifest is JSON, which has no NaN or infinity",
        ),
        (
            {"inputs": {"x": [[1, 2, 3, 4]]}, "expected": {"y": [[0, 0, 0]]}, "atol": 1e400},
            "{}",
            "golden.0.atol is inf: a manifest is JSON, which has no NaN or infinity",
        ),
    ],
    ids=["misspelt-output", "no-expected", "metadata-nan", "atol-inf"],
)
def test_a_golden_check_or_metadata_that_cannot_be_registered_is_named_in_one_line(
    tmp_path: Path, signature: Path, golden: dict[str, object], metadata: str, message: str
) -> None:
    code, lines = register_tiny_mlp(tmp_path, signature, golden, f"--metadata={metadata}")
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {message}"), lines[0]
    assert not (tmp_path / "registry" / "m" / "1.0.0").exists()


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"batch_size": -1}, "parameter batch_size must be an integer from 1 to 128"),
        ({"batch_size": 1, "seed": 1.5}, "parameter seed must be a 64-bit integer"),
    ],
    ids=["negative-batch", "float-seed"],
)
def test_golden_parameters_torch_refuses_fail_in_one_line(
    tmp_path: Path, parameters: dict[str, object], message: str
) -> None:
    """torch raised RuntimeError ("negative dimension", manual_seed's), shown as a traceback."""
    generated = TINY_SIGNATURE.model_dump(mode="json")
    generated["inputs"][0]["generate"] = "standard_normal"
    generated["parameters"] = {"batch_size": {"type": "int", "minimum": 1}, "seed": {"type": "int"}}
    signature = tmp_path / "signature.json"
    signature.write_text(json.dumps(generated))
    check = {"name": "drawn", "inputs": {}, "parameters": parameters, "expected": {"y": [[0] * 3]}}
    code, lines = register_tiny_mlp(tmp_path, signature, check)
    assert (code, lines) == (1, [f"error: golden check 'drawn': {message}"])
