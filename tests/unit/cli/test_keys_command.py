"""`frameworm keys ...` against a key file it cannot read: one error line, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env
    path = tmp_path / "keys" / "api-keys.json"
    monkeypatch.setenv("FRAMEWORM_API_KEYS_FILE", str(path))
    monkeypatch.setenv("FRAMEWORM_API_KEY_PEPPER", "p" * 32)
    return path


def frameworm(*argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["keys", *argv])
    return result.exit_code, result.output


def test_a_corrupt_key_file_fails_each_command_and_keeps_the_keys(keys: Path) -> None:
    assert frameworm("create", "alice")[0] == 0
    assert frameworm("create", "bob")[0] == 0
    [alice, bob] = json.loads(keys.read_text())["keys"]
    keys.write_text(keys.read_text().replace("\n  ]", "\n  ],"))  # a stray trailing comma
    corrupt = keys.read_bytes()
    for argv in (["create", "carol"], ["revoke", alice["id"]], ["list"]):
        code, output = frameworm(*argv)
        assert code == 1, (argv, output)
        [line] = output.splitlines()
        assert line.startswith(f"error: cannot read key file {keys}"), line
    assert keys.read_bytes() == corrupt
    keys.write_text(keys.read_text().replace("\n  ],", "\n  ]"))
    code, output = frameworm("list", "--json")
    assert code == 0
    assert [row["owner"] for row in json.loads(output)] == [alice["owner"], bob["owner"]]


def test_a_development_server_refuses_a_corrupt_key_file_in_one_line(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` reads the key file before anything starts (to make a bootstrap key if none)."""
    assert frameworm("create", "alice")[0] == 0
    keys.write_text(keys.read_text()[:-20])  # cut short mid-write
    monkeypatch.setenv("FRAMEWORM_REGISTRY", str(keys.parent / "registry"))
    result = CliRunner().invoke(cli, ["serve", "--port", "0"])
    assert result.exit_code == 1, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"error: cannot read key file {keys}"), line
