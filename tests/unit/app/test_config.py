"""Settings: FRAMEWORM_* variables, *_FILE secrets, and the refusals of unsafe production setups."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import Settings

PEPPER = "p" * 32


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No FRAMEWORM_* from the machine running the tests, and no .env file in reach."""
    for name in list(os.environ):
        if name.startswith("FRAMEWORM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"env": "production", "auth_enabled": True, "api_key_pepper": PEPPER}
    values.update(overrides)
    return Settings(**values)


def test_settings_come_from_frameworm_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRAMEWORM_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("FRAMEWORM_AUTH_ENABLED", "false")
    settings = Settings()
    assert settings.max_batch_size == 7
    assert settings.auth_enabled is False


def test_development_allows_auth_off_without_a_pepper() -> None:
    settings = Settings(auth_enabled=False)
    assert settings.env == "development"
    assert settings.api_key_pepper is None


def test_production_with_auth_a_long_pepper_and_no_docs_is_accepted() -> None:
    settings = production()
    assert settings.api_key_pepper is not None
    assert settings.api_key_pepper.get_secret_value() == PEPPER


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        pytest.param({"auth_enabled": False}, "auth is off", id="auth-off"),
        pytest.param({"api_key_pepper": None}, "no API key pepper", id="no-pepper"),
        pytest.param({"api_key_pepper": "short"}, "shorter than 32", id="short-pepper"),
        pytest.param(
            {"bootstrap_api_key": "k"}, "bootstrap API key is shorter", id="short-bootstrap-key"
        ),
        pytest.param(
            {"metrics_token": "guessable"}, "metrics token is shorter", id="short-metrics-token"
        ),
        pytest.param({"enable_docs": True}, "docs are on", id="docs-on"),
    ],
)
def test_production_refuses_unsafe_settings(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        production(**overrides)


def test_the_refusal_lists_every_unsafe_setting_at_once() -> None:
    with pytest.raises(ValidationError) as caught:
        production(auth_enabled=False, enable_docs=True, api_key_pepper=None)
    message = str(caught.value)
    assert "auth is off" in message
    assert "docs are on" in message
    assert "no API key pepper" in message


def test_the_refusal_never_shows_the_pepper() -> None:
    with pytest.raises(ValidationError) as caught:
        production(api_key_pepper="sekrit-pepper", auth_enabled=False)
    assert "sekrit-pepper" not in str(caught.value)


# In any case, as the settings read names: a lower-case _FILE passed for a known setting (no
# warning) and was never read, leaving /metrics open when it was the metrics token's.
@pytest.mark.parametrize(
    "variable", ["FRAMEWORM_API_KEY_PEPPER_FILE", "frameworm_api_key_pepper_file"]
)
def test_a_secret_is_read_from_its_file_and_stripped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    secret = tmp_path / "pepper"
    secret.write_text("f" * 40 + "\n", encoding="utf-8")
    monkeypatch.setenv("FRAMEWORM_ENV", "production")
    monkeypatch.setenv(variable, str(secret))
    settings = Settings()
    assert settings.api_key_pepper is not None
    assert settings.api_key_pepper.get_secret_value() == "f" * 40


def test_the_file_wins_over_the_plain_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "metrics-token"
    secret.write_text("from-file", encoding="utf-8")
    monkeypatch.setenv("FRAMEWORM_METRICS_TOKEN", "from-env")
    monkeypatch.setenv("FRAMEWORM_METRICS_TOKEN_FILE", str(secret))
    token = Settings().metrics_token
    assert token is not None
    assert token.get_secret_value() == "from-file"


def test_an_unreadable_secret_file_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FRAMEWORM_API_KEY_PEPPER_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="FRAMEWORM_API_KEY_PEPPER_FILE cannot be read"):
        Settings()


@pytest.mark.parametrize("value", ["127.0.0.1", "10.0.0.0/8, 192.168.1.1", "*", "::1"])
def test_forwarded_allow_ips_accepts_addresses_networks_and_star(value: str) -> None:
    assert Settings(forwarded_allow_ips=value).forwarded_allow_ips == value


@pytest.mark.parametrize("value", ["not-an-ip", "10.0.0.0/99", "127.0.0.1, 300.1.1.1"])
def test_forwarded_allow_ips_refuses_what_is_not_an_address(value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(forwarded_allow_ips=value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_batch_size", 0), ("load_retries", 0), ("request_timeout_ms", 0), ("port", 70000)],
)
def test_out_of_range_numbers_are_refused(field: str, value: int) -> None:
    values: dict[str, Any] = {field: value}
    with pytest.raises(ValidationError):
        Settings(**values)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.max_batch_size = 3  # type: ignore[misc]


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_metrics_token_is_refused_not_taken_as_protection(
    token: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="metrics token is empty"):
        Settings(metrics_token=token)
    secret = tmp_path / "metrics-token"
    secret.write_text(token)
    monkeypatch.setenv("FRAMEWORM_METRICS_TOKEN_FILE", str(secret))
    with pytest.raises(ValidationError, match="metrics token is empty"):
        Settings()


@pytest.mark.parametrize("field", ["bootstrap_api_key", "metrics_token"])
@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "is empty"),  # a development server started with no key and no word why
        ("  ", "is empty"),
        ("sécret-" + "k" * 32, "printable ASCII"),  # matched Latin-1 clients only, not curl
        ("secret-€-" + "k" * 32, "printable ASCII"),  # matched no client at all
        ("tab\there-" + "k" * 32, "printable ASCII"),
        (" padded-" + "k" * 32, "printable ASCII"),  # header values lose surrounding spaces
    ],
)
def test_a_header_secret_no_client_could_send_is_refused(
    field: str, value: str, match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        Settings(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps", "meta"])
def test_a_device_that_is_not_cpu_or_cuda_is_one_settings_error(device: str) -> None:
    with pytest.raises(ValidationError, match="device"):
        Settings(device=device)


def test_a_cpu_device_is_settled_without_importing_torch() -> None:
    """The --workers supervisor builds the settings and serves nothing: with
    FRAMEWORM_DEVICE=cpu it imported torch to check the name (250 MB where it holds 55)."""
    code = (
        "import sys; from app.config import Settings; "
        "Settings(_env_file=None, device='cpu'); print('torch' in sys.modules)"
    )
    checked = subprocess.run(  # a fresh interpreter: this one has torch imported already
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert checked.stdout.strip() == "False"


@pytest.mark.parametrize("device", ["cpu:7", "cuda:", "CUDA", "cuda:0 "])
def test_a_device_name_torch_would_not_serve_on_is_refused(device: str) -> None:
    with pytest.raises(ValidationError, match="device"):
        Settings(device=device)


def test_cuda_without_cuda_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValidationError, match="CUDA is not available"):
        Settings(device="cuda")
    assert Settings(device="cpu").device == "cpu"
    assert Settings(device="auto").device == "auto"


def test_the_header_timeout_comes_from_its_variable_and_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().header_timeout_s == 10.0
    monkeypatch.setenv("FRAMEWORM_HEADER_TIMEOUT_S", "2.5")
    assert Settings().header_timeout_s == 2.5
    with pytest.raises(ValidationError):
        Settings(header_timeout_s=0)


def test_several_workers_with_in_memory_rate_limits_are_warned_about_in_development(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from app.serve import check_rate_limit_is_shared

    with caplog.at_level(logging.WARNING, logger="frameworm.serve"):
        check_rate_limit_is_shared(Settings(workers=3))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "3 times FRAMEWORM_RATE_LIMIT" in record.getMessage()
    assert "FRAMEWORM_RATE_LIMIT_STORAGE" in record.getMessage()


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"workers": 1}, id="one-worker"),
        pytest.param({"workers": 2, "rate_limit_storage": "redis://r:6379/0"}, id="redis"),
        pytest.param({"workers": 2, "rate_limit_enabled": False}, id="rate-limits-off"),
    ],
)
def test_shared_or_single_process_rate_limits_are_not_warned_about(
    overrides: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from app.serve import check_rate_limit_is_shared

    with caplog.at_level(logging.WARNING, logger="frameworm.serve"):
        check_rate_limit_is_shared(Settings(**overrides))
        check_rate_limit_is_shared(production(**overrides))
    assert caplog.records == []


def test_production_refuses_to_serve_several_workers_with_in_memory_rate_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused before anything starts: no socket is bound, no worker spawned (the CLI prints
    the ValueError as its one error line)."""
    from app import serve

    def must_not_listen(settings: Settings) -> None:
        raise AssertionError("the server went on to listen")

    monkeypatch.setattr(serve, "configure_logging", lambda *args: None)
    monkeypatch.setattr(serve, "listening_socket", must_not_listen)
    with pytest.raises(ValueError, match="2 workers each keep their own in-memory rate limits"):
        serve.run(production(workers=2))


def test_a_secret_file_named_in_the_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "pepper").write_text("f" * 40, encoding="utf-8")
    (tmp_path / ".env").write_text(
        f"FRAMEWORM_ENV=production\nFRAMEWORM_API_KEY_PEPPER_FILE={tmp_path / 'pepper'}\n",
        encoding="utf-8",
    )
    settings = Settings()  # reads ./.env (the fixture's working directory)
    assert settings.api_key_pepper is not None
    assert settings.api_key_pepper.get_secret_value() == "f" * 40
    assert Settings(_env_file=None).api_key_pepper is None  # no .env, no file named


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shutdown_timeout_s", "inf"),
        ("max_body_mb", "inf"),
        ("request_timeout_ms", "1e309"),
        ("max_body_mb", "1e-9"),  # less than a byte
        ("follow_interval_s", "1e-300"),  # a busy poll of the registry
        ("workers", "100000"),  # an extra digit: thousands of processes, each with the model
        ("torch_threads", "100000"),
        ("max_body_mb", "1e13"),  # zlib's bound overflowed: every compressed request a 500
    ],
)
def test_infinite_or_vanishing_sizes_and_timeouts_are_refused(field: str, value: str) -> None:
    values: dict[str, Any] = {field: value}
    with pytest.raises(ValidationError, match=field):
        Settings(**values)


def test_a_limit_past_what_can_be_counted_is_refused_saying_why() -> None:
    with pytest.raises(ValidationError, match="at most 10\\^12 requests in at most 100 years"):
        Settings(rate_limit="99999999999999/second")


@pytest.mark.parametrize("field", ["rate_limit", "auth_failure_limit"])
def test_a_limit_that_does_not_parse_is_refused_at_start(field: str) -> None:
    values: dict[str, Any] = {field: "lots"}
    with pytest.raises(ValidationError, match="'lots' is not a limit such as 100/minute"):
        Settings(**values)


@pytest.mark.parametrize(
    "overrides", [{"result_cache": "redis"}, {"api_key_store": "redis", "auth_enabled": True}]
)
def test_what_needs_redis_is_refused_without_its_url(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="needs FRAMEWORM_REDIS_URL"):
        Settings(**overrides)
    Settings(**overrides, redis_url="redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("dsn", ["notadsn", "https://o1.ingest.sentry.io/5", "ftp://k@host/5"])
def test_a_sentry_dsn_that_is_not_one_is_refused_without_showing_it(dsn: str) -> None:
    with pytest.raises(ValidationError, match="not a Sentry DSN") as caught:
        Settings(sentry_dsn=dsn)
    assert dsn not in str(caught.value)


def test_a_sentry_dsn_is_accepted() -> None:
    assert Settings(sentry_dsn="https://key@o1.ingest.sentry.io/5").sentry_dsn is not None


def test_settings_of_a_feature_that_is_off_are_not_checked() -> None:
    """A redis key store with auth off, a rate limit string with rate limiting off: unused."""
    assert Settings(auth_enabled=False, api_key_store="redis").redis_url is None
    assert Settings(rate_limit_enabled=False, rate_limit="").rate_limit == ""
    with pytest.raises(ValidationError, match="FRAMEWORM_AUTH_FAILURE_LIMIT"):
        Settings(rate_limit_enabled=False, auth_failure_limit="lots")  # in use even then


def test_a_batch_delay_that_outlasts_the_request_timeout_is_refused() -> None:
    """Every request after a batch of several items waited for its batch to fill past its own
    deadline: a 504 for each, with nothing said at start."""
    with pytest.raises(ValidationError, match="FRAMEWORM_MAX_BATCH_DELAY_MS must be below"):
        Settings(max_batch_delay_ms=20_000, request_timeout_ms=10_000)
    assert Settings(max_batch_delay_ms=50, request_timeout_ms=100).max_batch_delay_ms == 50
