"""The gates, run by the test command: lint, format, strict types, security scan.

Each runs the real tool over the whole tree with the configuration in pyproject.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param((str(BIN / "ruff"), "check", "."), id="ruff-lint"),
        pytest.param((str(BIN / "ruff"), "format", "--check", "."), id="ruff-format"),
        pytest.param((str(BIN / "mypy"),), id="mypy-strict"),
        pytest.param(
            (str(BIN / "bandit"), "-q", "-c", "pyproject.toml", "-r", "app", "models"), id="bandit"
        ),
    ],
)
def test_the_tree_passes_the_gate(command: tuple[str, ...]) -> None:
    result = run(*command)
    assert result.returncode == 0, result.stdout + result.stderr
