"""`frameworm serve` with settings it cannot start on: one line naming them, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from tests.support import free_port


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("FRAMEWORM_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("FRAMEWORM_API_KEYS_FILE", str(tmp_path / "keys" / "api-keys.json"))
    monkeypatch.setenv("FRAMEWORM_PORT", str(free_port()))
    monkeypatch.setenv("FRAMEWORM_SEED_DEMO", "false")
    return tmp_path


def serve(monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[int, list[str]]:
    for name, value in env.items():
        monkeypatch.setenv(f"FRAMEWORM_{name}", value)
    result = CliRunner().invoke(cli, ["serve"])
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    return result.exit_code, errors


def test_every_bad_setting_is_named_as_the_operator_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, errors = serve(monkeypatch, PORT="abc", WORKERS="0", SHUTDOWN_TIMEOUT_S="inf")
    assert code == 1
    [line] = errors
    for name in ("FRAMEWORM_PORT: ", "FRAMEWORM_WORKERS: ", "FRAMEWORM_SHUTDOWN_TIMEOUT_S: "):
        assert name in line
    assert "Value error" not in line


def test_a_result_cache_in_redis_without_its_url_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert serve(monkeypatch, RESULT_CACHE="redis") == (
        1,
        ["error: FRAMEWORM_RESULT_CACHE=redis needs FRAMEWORM_REDIS_URL"],
    )


def test_a_read_only_key_store_without_a_key_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, errors = serve(monkeypatch, API_KEY_STORE="hashed-file")
    assert code == 1
    assert errors == [
        "error: the hashed-file key store holds no usable key: set "
        "FRAMEWORM_BOOTSTRAP_API_KEY_FILE or put a key in its Secret"
    ]


def test_an_unreachable_redis_key_store_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, errors = serve(monkeypatch, API_KEY_STORE="redis", REDIS_URL=url)
    assert code == 1
    [line] = errors
    assert line.startswith("error: Redis: ") and "Connection refused" in line
