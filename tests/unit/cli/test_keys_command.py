"""`frameworm keys ...` against a key file it cannot read: one error line, nothing written."""

from __future__ import annotations

import json
import time
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


@pytest.mark.parametrize("duration", ["99999999999999d", "36501d", "0d", "9" * 5000 + "s"])
def test_an_expiry_beyond_a_hundred_years_or_none_at_all_is_refused_in_one_line(
    keys: Path, duration: str
) -> None:
    code, output = frameworm("create", "bob", "--expires-in", duration)
    assert code == 1
    [line] = output.splitlines()
    assert line.startswith("error: "), line
    assert not keys.exists() or json.loads(keys.read_text())["keys"] == []
    assert frameworm("list")[0] == 0


def test_a_hundred_year_key_is_created_and_listed(keys: Path) -> None:
    assert frameworm("create", "bob", "--expires-in", "36500d")[0] == 0
    code, output = frameworm("list", "--json")
    assert code == 0, output
    [row] = json.loads(output)
    assert row["expires"] is not None


def test_a_key_file_holding_an_expiry_past_year_9999_still_lists(keys: Path) -> None:
    assert frameworm("create", "bob")[0] == 0
    data = json.loads(keys.read_text())
    data["keys"][0]["expires"] = 1e16  # written before expiries were bounded
    keys.write_text(json.dumps(data))
    code, output = frameworm("list")
    assert code == 0, output
    assert "expires 10000000000000000 (unix time)" in output


def test_a_key_whose_limit_the_server_cannot_apply_is_flagged_in_the_listing(keys: Path) -> None:
    """The server refuses such a key (401 invalid_limit); the listing said nothing of it."""
    assert frameworm("create", "alice", "--rate-limit", "10/minute")[0] == 0
    assert frameworm("create", "bob", "--rate-limit", "10/minute")[0] == 0
    data = json.loads(keys.read_text())
    data["keys"][0]["rate_limit"] = "2/second;3/minute"  # as an earlier version accepted
    keys.write_text(json.dumps(data))
    code, output = frameworm("list")
    assert code == 0, output
    alice, bob = output.splitlines()
    assert alice.endswith("limit 2/second;3/minute (unusable: the server refuses this key)")
    assert bob.endswith("limit 10/minute")
    code, output = frameworm("list", "--json")
    assert [row["rate_limit_usable"] for row in json.loads(output)] == [False, True]


def test_an_expired_key_is_listed_as_expired(keys: Path) -> None:
    """The server refuses it (401 expired); the listing showed it like a live one."""
    assert frameworm("create", "alice", "--expires-in", "1s")[0] == 0
    assert frameworm("create", "bob")[0] == 0
    time.sleep(1.1)
    code, output = frameworm("list")
    assert code == 0, output
    alice, bob = output.splitlines()
    assert "  expired  expires " in alice and "expired" not in bob
    rows = json.loads(frameworm("list", "--json")[1])
    assert [row["expired"] for row in rows] == [True, False]


@pytest.mark.parametrize("limit", ["100000000000000000000/second", "1/9300000000000000 seconds"])
def test_a_rate_limit_redis_could_not_count_is_refused_in_one_line(keys: Path, limit: str) -> None:
    """Every hit of such a key failed in Redis (an outage) and memory storage sent a
    Retry-After of 8.6e15 seconds."""
    code, output = frameworm("create", "bob", "--rate-limit", limit)
    assert code == 1
    assert output.splitlines() == [
        f"error: a rate limit allows at most 10^12 requests in at most 100 years (36500 days): "
        f"{limit!r}"
    ]
    assert not keys.exists() or json.loads(keys.read_text())["keys"] == []


def test_keys_are_listed_and_revoked_without_the_server_s_pepper(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing and revoking hash nothing: they failed (no pepper beside keys made with one),
    so a leaked key could not be revoked without first finding the server's pepper."""
    assert frameworm("create", "alice")[0] == 0
    [alice] = json.loads(keys.read_text())["keys"]
    monkeypatch.delenv("FRAMEWORM_API_KEY_PEPPER")
    code, output = frameworm("list")
    assert code == 0 and output.startswith(f"{alice['id']}  alice"), output
    assert frameworm("revoke", alice["id"]) == (0, f"revoked {alice['id']}\n")
    assert json.loads(keys.read_text())["keys"][0]["revoked"] is not None
    assert not (keys.parent / "pepper").exists()  # nor made one up
