"""A development pepper is generated only for a key store that holds no keys yet."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings
from app.production import APIKeyAuth
from app.production.keys import resolve_pepper
from app.production.keystore import FileKeyStore

SERVER_PEPPER = "s" * 32


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A key file holding one key, made with the server's pepper (FRAMEWORM_API_KEY_PEPPER
    set for the server, not in this shell), and no pepper file beside it."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("FRAMEWORM_API_KEY_PEPPER", "FRAMEWORM_API_KEY_PEPPER_FILE", "FRAMEWORM_ENV"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "keys" / "api-keys.json"
    monkeypatch.setenv("FRAMEWORM_API_KEYS_FILE", str(path))
    APIKeyAuth(store=FileKeyStore(path), pepper=SERVER_PEPPER).create_key("alice")
    return path


def test_no_pepper_is_made_up_for_keys_hashed_with_another(keys: Path) -> None:
    """It was: every key made with it could never authenticate, and every later run used it."""
    settings = Settings(_env_file=None)
    for make in (lambda: resolve_pepper(settings), lambda: APIKeyAuth(settings=settings)):
        with pytest.raises(ValueError, match="FRAMEWORM_API_KEY_PEPPER") as refused:
            make()
        assert str(keys.parent / "pepper") in str(refused.value)
    assert sorted(p.name for p in keys.parent.iterdir()) == ["api-keys.json", "api-keys.json.lock"]


def test_keys_create_without_the_server_s_pepper_fails_in_one_line(keys: Path) -> None:
    before = keys.read_bytes()
    result = CliRunner().invoke(cli, ["keys", "create", "bob"])
    assert result.exit_code == 1, result.output
    [line] = result.output.splitlines()
    assert line.startswith("error: the key store holds keys but there is no pepper at"), line
    assert keys.read_bytes() == before
    assert not (keys.parent / "pepper").exists()


def test_an_empty_store_still_gets_a_generated_pepper(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, api_keys_file=tmp_path / "api-keys.json")
    key = APIKeyAuth(settings=settings).create_key("alice")
    assert (tmp_path / "pepper").exists()
    assert APIKeyAuth(settings=settings).verify_key(key)  # the pepper file is used from now on
