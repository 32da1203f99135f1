"""`frameworm serve` with settings it cannot start on: one line naming them, exit 1."""

from __future__ import annotations

import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app import serve as serve_module
from app import workers as workers_module
from app.cli import cli
from app.config import Settings
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


@pytest.mark.parametrize("bootstrap", [False, True])
def test_an_unreachable_redis_key_store_is_one_line(
    monkeypatch: pytest.MonkeyPatch, bootstrap: bool
) -> None:
    """With a bootstrap key (as the chart always sets) the key store was not read at start: a
    server became ready that answered every other key 503."""
    if bootstrap:
        monkeypatch.setenv("FRAMEWORM_BOOTSTRAP_API_KEY", "b" * 40)
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, errors = serve(monkeypatch, API_KEY_STORE="redis", REDIS_URL=url)
    assert code == 1
    [line] = errors
    assert line.startswith("error: Redis: ") and "Connection refused" in line


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("MODEL", "Cnn Digits", "FRAMEWORM_MODEL: invalid model name"),
        ("MODEL_VERSION", "1.0", "FRAMEWORM_MODEL_VERSION: invalid version '1.0'"),
        ("REGISTRY", " ", "FRAMEWORM_REGISTRY: empty"),
        ("OTLP_ENDPOINT", "http://:4317", "FRAMEWORM_OTLP_ENDPOINT: it names no host"),
        ("SENTRY_DSN", "https://key@sentry.example:99999/1", "FRAMEWORM_SENTRY_DSN: not a"),
        ("SENTRY_DSN", "https://key@sentry.example/1/", "FRAMEWORM_SENTRY_DSN: not a"),
        # Served as "cpu:7", a label no dashboard filtering on cpu would find.
        ("DEVICE", "cpu:7", "FRAMEWORM_DEVICE: 'cpu:7': the CPU has no index"),
    ],
)
def test_settings_found_wrong_only_later_are_refused_at_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    """A misspelt model was three failed loads and exit 3 (a broken artefact, it read); an
    empty registry seeded the demo models into the working directory; a DSN's bad port was
    refused after the port was bound, as if FRAMEWORM_PORT were wrong; an endpoint without a
    host failed every export."""
    code, errors = serve(monkeypatch, **{name: value})
    assert code == 1
    [line] = errors
    assert line.startswith(f"error: {problem}"), line
    assert "key@" not in line


def test_an_empty_model_version_is_no_pin() -> None:
    assert Settings(_env_file=None, model_version="").model_version is None


def test_a_rate_limit_storage_without_a_scheme_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was found in create_app, after the port was bound, and the error quoted it whole."""
    result = CliRunner().invoke(
        cli, ["serve"], env={"FRAMEWORM_RATE_LIMIT_STORAGE": "redis//:S3cret@redis:6379/0"}
    )
    assert result.exit_code == 1
    assert "S3cret" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: FRAMEWORM_RATE_LIMIT_STORAGE: it has no scheme: use memory://")


def settings_workers_cannot_build_an_app_with(home: Path) -> Settings:
    """A key store's directory that cannot be made: each worker's create_app fails (the
    bootstrap key spared the supervisor's own look at the key store)."""
    (home / "a-file").write_text("")
    return Settings(
        workers=2,
        api_keys_file=home / "a-file" / "api-keys.json",
        bootstrap_api_key="k" * 32,
        rate_limit_storage="redis://127.0.0.1:6379/0",
    )


def test_what_would_stop_every_worker_stops_the_supervisor_first_in_one_line(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in each worker, it was a traceback per worker; now it is found before the port is
    bound, and the CLI prints the OSError as its one error line."""

    def must_not_listen(settings: Settings) -> None:
        raise AssertionError("the server went on to listen")

    monkeypatch.setattr(serve_module, "configure_logging", lambda *args: None)
    monkeypatch.setattr(serve_module, "listening_socket", must_not_listen)
    with pytest.raises(OSError, match="a-file"):
        serve_module.run(settings_workers_cannot_build_an_app_with(home))


def test_a_worker_that_cannot_build_its_app_says_so_in_one_line(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(workers_module, "configure_logging", lambda *args: None)
    monkeypatch.setattr(workers_module, "_drain_when_orphaned", lambda supervisor: None)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the test's own SIGINT stays
    settings = settings_workers_cannot_build_an_app_with(home)
    with socket.socket() as sock, pytest.raises(SystemExit) as caught:
        workers_module._worker(serve_module.serve_one, settings, sock, os.getppid())
    assert caught.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: [Errno 17] File exists: ") and "a-file" in line


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({"auto_rollback": True}, "FRAMEWORM_AUTO_ROLLBACK is ignored"),
        (
            {"max_batch_size": 64, "max_queue_items": 16},
            "FRAMEWORM_MAX_BATCH_SIZE=64 is above FRAMEWORM_MAX_QUEUE_ITEMS=16: a batch never "
            "holds more than 16 items",
        ),
    ],
)
def test_settings_that_cannot_take_effect_are_warned_about_at_start(
    overrides: dict[str, Any],
    warned: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def cannot_listen(settings: Settings) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(serve_module, "configure_logging", lambda *args: None)
    monkeypatch.setattr(serve_module, "listening_socket", cannot_listen)
    with caplog.at_level(logging.WARNING, logger="frameworm.serve"):
        assert serve_module.run(Settings(bootstrap_api_key="k" * 32, **overrides)) == 1
        assert serve_module.run(Settings(bootstrap_api_key="k" * 32)) == 1
    [warning] = [
        r for r in caplog.records if r.name == "frameworm.serve" and r.levelname == "WARNING"
    ]
    assert warning.getMessage().startswith(warned)


def test_a_misspelt_variable_is_warned_about_and_real_ones_are_not(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """FRAMEWORM_MAX_BATCHSIZE=7 was ignored without a word (the settings ignore unknowns)."""

    def cannot_listen(settings: Settings) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(serve_module, "configure_logging", lambda *args: None)
    monkeypatch.setattr(serve_module, "listening_socket", cannot_listen)
    monkeypatch.setenv("FRAMEWORM_MAX_BATCHSIZE", "7")
    (home / "token").write_text("t" * 40)
    monkeypatch.setenv("FRAMEWORM_METRICS_TOKEN_FILE", str(home / "token"))  # a secret's: known
    monkeypatch.setenv("FRAMEWORM_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("FRAMEWORM_Max_Batch_Size", "7")  # read: the settings ignore case
    # What Kubernetes sets for Services named frameworm and frameworm-metrics, links on.
    monkeypatch.setenv("FRAMEWORM_METRICS_SERVICE_HOST", "10.0.0.7")
    monkeypatch.setenv("FRAMEWORM_SERVICE_PORT_HTTP", "80")
    monkeypatch.setenv("FRAMEWORM_PORT_80_TCP_ADDR", "10.0.0.6")
    monkeypatch.setenv("FRAMEWORM_REDIS_PORT", "tcp://10.0.0.8:6379")  # frameworm-redis's
    # The .env file's lines are settings too: a misspelt one there went unsaid.
    (home / ".env").write_text("FRAMEWORM_QUEUE_ITEMS=9\nFRAMEWORM_MAX_QUEUE_ITEMS=9\n")
    with caplog.at_level(logging.WARNING, logger="frameworm.serve"):
        serve_module.run(Settings(_env_file=None, bootstrap_api_key="k" * 32))
    warned = [r.getMessage() for r in caplog.records if "FRAMEWORM_" in r.getMessage()]
    assert warned == [
        "FRAMEWORM_MAX_BATCHSIZE is no setting (misspelt?): ignored",
        "FRAMEWORM_QUEUE_ITEMS is no setting (misspelt?): ignored",
    ]


def test_auto_rollback_with_a_followed_stage_is_not_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(serve_module, "configure_logging", lambda *args: None)
    with caplog.at_level(logging.WARNING, logger="frameworm.serve"):
        serve_module.warn_of_settings_without_effect(
            Settings(auto_rollback=True, follow_stage=True)
        )
    assert caplog.records == []


def test_a_port_another_server_holds_is_refused_even_before_either_listens() -> None:
    """Bound with SO_REUSEADDR but not listening until the app was built, a port was bound by a
    second server too; the first to listen won and the other started, serving nothing."""
    first = serve_module.listening_socket(Settings(host="127.0.0.1", port=0))
    with first:
        port = first.getsockname()[1]
        with pytest.raises(OSError):
            serve_module.listening_socket(Settings(host="127.0.0.1", port=port)).close()
