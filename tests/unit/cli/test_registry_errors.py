"""`frameworm registry` fails in one line, never a traceback, and never passes on a typo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from models.registry import ModelRegistry
from models.store import LocalStore
from tests.support.artefacts import TINY_CONFIG, TINY_SIGNATURE, write_tiny_mlp


def frameworm(registry: Path, *argv: str) -> tuple[int, list[str]]:
    """Run the command; return its exit code and output lines, after checking it did not crash."""
    result = CliRunner().invoke(cli, ["registry", *argv], env={"FRAMEWORM_REGISTRY": str(registry)})
    # An exception escaping the command is what prints a traceback outside the test runner.
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    return result.exit_code, result.output.splitlines()


@pytest.fixture
def signature(tmp_path: Path) -> Path:
    path = tmp_path / "signature.json"
    path.write_text(TINY_SIGNATURE.model_dump_json())
    return path


def register(tmp_path: Path, artefact: Path, *options: str) -> tuple[int, list[str]]:
    return frameworm(tmp_path / "registry", "register", "m", "1.0.0", str(artefact), *options)


@pytest.mark.parametrize(
    ("family", "config", "message"),
    [
        (
            "cnn",
            {
                "in_channels": 1,
                "height": 8,
                "width": 8,
                "channels": [4],
                "pool": [False],
                "hidden": -1,
                "classes": 3,
                "softmax": False,
            },
            "error: bad config for family 'cnn': Trying to create tensor with negative dimension",
        ),
        ("mlp", {**TINY_CONFIG, "hidden": [-1]}, "error: bad config for family 'mlp': "),
    ],
    ids=["negative-hidden", "negative-layer"],
)
def test_a_family_config_the_constructor_refuses_fails_in_one_line(
    tmp_path: Path, signature: Path, family: str, config: dict[str, object], message: str
) -> None:
    code, lines = register(
        tmp_path,
        write_tiny_mlp(tmp_path / "m.safetensors"),
        f"--signature={signature}",
        f"--family={family}",
        f"--family-config={json.dumps(config)}",
    )
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(message), lines[0]


@pytest.mark.parametrize("option", ["--family-config", "--metadata"])
def test_an_option_that_is_not_json_is_named(tmp_path: Path, signature: Path, option: str) -> None:
    code, lines = register(
        tmp_path,
        write_tiny_mlp(tmp_path / "m.safetensors"),
        f"--signature={signature}",
        "--family=mlp",
        f"{option}={{bad",
    )
    assert code == 1
    [line] = lines
    assert line.startswith(f"error: {option} is not JSON: "), line


def test_a_file_that_is_not_safetensors_fails_in_one_line(tmp_path: Path, signature: Path) -> None:
    artefact = tmp_path / "model.bin"
    artefact.write_bytes(b"\xff" * 64)  # its first 8 bytes read as a huge header length
    code, lines = register(
        tmp_path,
        artefact,
        "--format=safetensors",
        f"--signature={signature}",
        "--family=mlp",
        f"--family-config={json.dumps(TINY_CONFIG)}",
    )
    assert code == 1
    assert lines == ["error: not a safetensors file: Error while deserializing: header too large"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--family=mlp", "--family-config=[1]"], "family_config: Input should be a valid dict"),
        (
            ["--family=mlp", f"--family-config={json.dumps(TINY_CONFIG)}", "--metadata=[1]"],
            "metadata: Input should be a valid dict",
        ),
        (
            ["--format=torchscript"],
            "TorchScript artefacts carry code: register them as trusted (--trusted",
        ),
    ],
    ids=["family-config", "metadata", "untrusted-torchscript"],
)
def test_a_manifest_field_refused_by_validation_is_named_in_one_line(
    tmp_path: Path, signature: Path, options: list[str], message: str
) -> None:
    code, lines = register(
        tmp_path, write_tiny_mlp(tmp_path / "m.safetensors"), f"--signature={signature}", *options
    )
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {message}"), lines[0]
    assert "pydantic" not in lines[0]


@pytest.fixture
def registry(tmp_path: Path, signature: Path) -> Path:
    """A registry with m 1.0.0, 2.0.0 and 3.0.0, registered through the CLI."""
    root = tmp_path / "registry"
    for seed, version in enumerate(("1.0.0", "2.0.0", "3.0.0")):
        code, lines = frameworm(
            root,
            "register",
            "m",
            version,
            str(write_tiny_mlp(tmp_path / f"m{seed}.safetensors", seed=seed)),
            f"--signature={signature}",
            "--family=mlp",
            f"--family-config={json.dumps(TINY_CONFIG)}",
        )
        assert code == 0, lines
    return root


def test_verify_names_a_broken_manifest_and_still_checks_the_rest(registry: Path) -> None:
    (registry / "m" / "3.0.0" / "manifest.json").write_text("{broken")
    code, lines = frameworm(registry, "verify", "--json")
    assert code == 1
    rows = {row["version"]: row for row in json.loads("\n".join(lines))}
    assert rows["1.0.0"]["ok"] and rows["2.0.0"]["ok"]
    assert not rows["3.0.0"]["ok"]
    assert rows["3.0.0"]["detail"].startswith("m/3.0.0/manifest.json is unreadable")


@pytest.mark.parametrize("argv", [("m", ""), ("", "1.0.0")])
def test_verify_refuses_an_empty_name_or_version_instead_of_checking_all(
    registry: Path, argv: tuple[str, str]
) -> None:
    """`verify m ""` checked every version, and `verify "" 1.0.0` every model's 1.0.0."""
    code, lines = frameworm(registry, "verify", *argv)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: invalid"), lines


def test_verify_names_a_broken_index(registry: Path) -> None:
    (registry / "m" / "index.json").write_text('{"name": "m", "versions": 3}')
    code, lines = frameworm(registry, "verify")
    assert code == 1
    [_header, row] = lines
    assert row.split()[:3] == ["m", "-", "False"]
    assert "m/index.json is unreadable: versions: Input should be a valid array" in row


@pytest.mark.parametrize("command", [["verify"], ["list"], ["show", "m"], ["history", "m"]])
def test_read_commands_refuse_a_registry_directory_that_does_not_exist(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "regsitry"
    code, lines = frameworm(missing, *command)
    assert code == 1
    assert lines == [f"error: no registry at {missing}: the directory does not exist"]
    assert not missing.exists()


def test_register_still_creates_a_new_registry(tmp_path: Path, signature: Path) -> None:
    fresh = tmp_path / "new" / "registry"
    code, lines = frameworm(
        fresh,
        "register",
        "m",
        "1.0.0",
        str(write_tiny_mlp(tmp_path / "m.safetensors")),
        f"--signature={signature}",
        "--family=mlp",
        f"--family-config={json.dumps(TINY_CONFIG)}",
    )
    assert code == 0, lines
    assert frameworm(fresh, "list")[0] == 0
    code, lines = frameworm(fresh, "verify")
    assert code == 0
    assert lines[1].split()[:3] == ["m", "1.0.0", "True"]


def test_an_empty_existing_registry_lists_none(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert frameworm(tmp_path / "empty", "list") == (0, ["(none)"])
    assert frameworm(tmp_path / "empty", "verify") == (0, ["(none)"])


def test_stray_entries_in_the_registry_root_are_not_models(registry: Path) -> None:
    """A note beside the models made `list` and `verify` fail with 'Not a directory'; a folder
    whose name is no model name, with 'invalid model name'."""
    (registry / "NOTES.txt").write_text("hi")
    (registry / "Old").mkdir()
    (registry / "Old" / "index.json").write_text("{}")
    code, lines = frameworm(registry, "list", "--json")
    assert code == 0, lines
    assert {row["name"] for row in json.loads("\n".join(lines))} == {"m"}
    code, lines = frameworm(registry, "verify", "--json")
    assert code == 0, lines
    assert [row["version"] for row in json.loads("\n".join(lines))] == ["1.0.0", "2.0.0", "3.0.0"]


def test_list_shows_a_model_with_an_unreadable_index_and_every_other_model(
    registry: Path, tmp_path: Path
) -> None:
    broken = registry / "n"
    broken.mkdir()
    (broken / "index.json").write_text("{broken")
    code, lines = frameworm(registry, "list", "--json")
    assert code == 1  # damage is not a clean listing
    rows = json.loads("\n".join(lines))
    assert [row["version"] for row in rows if row["name"] == "m"] == ["1.0.0", "2.0.0", "3.0.0"]
    [row] = [row for row in rows if row["name"] == "n"]
    assert row["version"] is None and row["status"].startswith("unreadable: n/index.json")


def test_show_gives_the_revision_that_if_revision_compares_with(registry: Path) -> None:
    code, lines = frameworm(registry, "show", "m", "1.0.0", "--json")
    assert code == 0, lines
    revision = json.loads("\n".join(lines))["revision"]
    code, lines = frameworm(
        registry, "promote", "m", "2.0.0", "staging", "--skip-checks", f"--if-revision={revision}"
    )
    assert code == 0, lines


def forbid(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """Make the store's read of `key` fail as a file of another user's, mode 0600, does."""
    real_read = LocalStore.read

    def read(store: LocalStore, wanted: str) -> bytes | None:
        if wanted == key:
            raise PermissionError(13, "Permission denied", str(store.root / wanted))
        return real_read(store, wanted)

    monkeypatch.setattr(LocalStore, "read", read)


def rows_with_an_unreadable_index(
    registry: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> list[dict[str, Any]]:
    """`command --json`'s rows (exit 1) with a second model, n, whose index may not be read."""
    (registry / "n").mkdir()
    (registry / "n" / "index.json").write_text("{}")
    forbid(monkeypatch, "n/index.json")
    code, lines = frameworm(registry, command, "--json")
    assert code == 1
    rows: list[dict[str, Any]] = json.loads("\n".join(lines))
    return rows


def test_list_shows_a_model_whose_index_may_not_be_read_and_every_other_model(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = rows_with_an_unreadable_index(registry, monkeypatch, "list")
    assert [row["version"] for row in rows if row["name"] == "m"] == ["1.0.0", "2.0.0", "3.0.0"]
    [row] = [row for row in rows if row["name"] == "n"]
    assert row["version"] is None and row["status"].startswith("unreadable: ")
    assert "Permission denied" in row["status"]


@pytest.mark.parametrize("command", [["verify"], ["verify", "m"]])
def test_verify_reports_a_manifest_it_may_not_read_and_still_checks_the_rest(
    registry: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    forbid(monkeypatch, "m/2.0.0/manifest.json")
    code, lines = frameworm(registry, *command, "--json")
    assert code == 1
    rows = {row["version"]: row for row in json.loads("\n".join(lines))}
    assert rows["1.0.0"]["ok"] and rows["3.0.0"]["ok"]
    assert not rows["2.0.0"]["ok"]
    assert "Permission denied" in rows["2.0.0"]["detail"]


def test_verify_reports_another_models_index_it_may_not_read_as_one_row(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = rows_with_an_unreadable_index(registry, monkeypatch, "verify")
    assert [(r["name"], r["version"], r["ok"]) for r in rows] == [
        ("m", "1.0.0", True),
        ("m", "2.0.0", True),
        ("m", "3.0.0", True),
        ("n", None, False),
    ]


def test_an_empty_index_is_a_damaged_one_not_a_missing_model(registry: Path) -> None:
    (registry / "m" / "index.json").write_bytes(b"")
    code, lines = frameworm(registry, "list", "--json")
    assert code == 1
    [row] = json.loads("\n".join(lines))
    assert row["name"] == "m" and row["version"] is None
    assert row["status"].startswith("unreadable: m/index.json is unreadable")
    code, lines = frameworm(registry, "verify")
    assert code == 1
    assert lines[1].split()[:3] == ["m", "-", "False"]
    code, lines = frameworm(registry, "promote", "m", "1.0.0", "staging", "--skip-checks")
    assert code == 1
    [line] = lines
    assert line.startswith("error: m/index.json is unreadable: "), line


@pytest.mark.parametrize("command", ["list", "verify"])
def test_a_model_folder_linked_out_of_the_root_is_one_row_and_hides_no_other(
    registry: Path, tmp_path: Path, command: str
) -> None:
    """It failed the whole command in one line (and a server's start, which asks whether the
    registry is empty): nothing listed, checked or backed up."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "index.json").write_text("{}")
    (registry / "aaa-linked").symlink_to(outside)
    code, lines = frameworm(registry, command, "--json")
    assert code == 1
    rows = json.loads("\n".join(lines))
    assert {row["version"] for row in rows if row["name"] == "m"} == {"1.0.0", "2.0.0", "3.0.0"}
    [row] = [row for row in rows if row["name"] == "aaa-linked"]
    assert row["version"] is None and "leaves the registry root" in json.dumps(row)
    assert not ModelRegistry(registry).is_empty()


def register_tiny_mlp(tmp_path: Path, signature: Path, *options: str) -> tuple[int, list[str]]:
    return register(
        tmp_path,
        write_tiny_mlp(tmp_path / "m.safetensors"),
        f"--signature={signature}",
        "--family=mlp",
        f"--family-config={json.dumps(TINY_CONFIG)}",
        *options,
    )


@pytest.mark.parametrize("content", ["null", "5", '{"inputs": {}}'])
def test_a_golden_file_that_is_not_a_list_fails_in_one_line(
    tmp_path: Path, signature: Path, content: str
) -> None:
    """`null` and `5` were a traceback; an object was read as its keys."""
    golden = tmp_path / "golden.json"
    golden.write_text(content)
    code, lines = register_tiny_mlp(tmp_path, signature, f"--golden={golden}")
    assert code == 1
    assert lines == [
        f"error: golden file {golden} must be a JSON list of checks: Input should be a valid list"
    ]


def test_metadata_nested_too_deeply_to_read_back_is_refused_before_anything_is_written(
    tmp_path: Path, signature: Path
) -> None:
    """220 levels were registered, then no command could read the manifest again, and the
    version could not be registered anew either."""
    deep = "[" * 220 + "]" * 220
    code, lines = register_tiny_mlp(tmp_path, signature, f'--metadata={{"notes": {deep}}}')
    assert code == 1
    assert lines == ["error: metadata or family_config is nested too deeply to be stored"]
    assert not (tmp_path / "registry" / "m").exists()


def test_a_directory_for_an_artefact_is_named_as_not_a_file(
    tmp_path: Path, signature: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its format was guessed first: "cannot tell the format of ; pass --format"."""
    monkeypatch.chdir(tmp_path)
    code, lines = register(tmp_path, Path("."), "--signature", str(signature))
    assert (code, lines) == (1, ["error: artefact . is not a file"])
