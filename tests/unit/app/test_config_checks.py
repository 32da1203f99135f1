"""Settings refused at start, in one line naming the variable and never quoting a secret:
Redis URLs, the rate-limit storage, the listen address, the key store's file, secret files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.cli.output import settings_message
from app.config import Settings
from app.production.ratelimit import RateLimiter
from app.production.tracing import resolve_protocol
from tests.unit.app import test_config

PASSWORD = "S3cretPassw0rd"
# No FRAMEWORM_* from the machine running the tests, and no .env file in reach (autouse).
clean_environment = test_config.clean_environment


def refusal(**values: Any) -> str:
    """The CLI's one line for these settings, which must be refused."""
    with pytest.raises(ValidationError) as caught:
        Settings(**values)
    return settings_message(caught.value)


def test_a_storage_uri_without_a_scheme_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`redis//...` (no colon) parsed no scheme, and the whole URI was printed at the first
    request's rate limiter: the password with it."""
    uri = f"redis//:{PASSWORD}@redis.internal:6379/0"
    line = refusal(rate_limit_storage=uri)
    assert line.startswith("FRAMEWORM_RATE_LIMIT_STORAGE: it has no scheme: use memory://")
    assert PASSWORD not in line
    secret = tmp_path / "storage"
    secret.write_text(uri)
    monkeypatch.setenv("FRAMEWORM_RATE_LIMIT_STORAGE_FILE", str(secret))
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert PASSWORD not in settings_message(caught.value)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        (f"redis//:{PASSWORD}@h:6379/0", "(no scheme)"),
        (f"{PASSWORD}://h:6379/0", f"({PASSWORD}://)"),  # a scheme is what a scheme looks like
        (f"user:{PASSWORD}@h:6379", "(no scheme)"),
    ],
)
def test_the_rate_limiter_names_an_unknown_storage_by_its_scheme_alone(uri: str, says: str) -> None:
    with pytest.raises(ValueError, match="unsupported rate-limit storage") as caught:
        RateLimiter(10, 60, storage_uri=uri)
    assert says in str(caught.value)
    assert uri not in str(caught.value)
    if says == "(no scheme)":
        assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:6379", "it has no scheme: use redis://, rediss:// or unix://"),
        ("", "it has no scheme"),
        ("http://h:6379/0", "http:// is not supported"),
        (f"redis://:{PASSWORD}@127.0.0.1:notaport/0", "its port is not a number"),
        (f"redis://user:{PASSWORD}", "its port is not a number"),  # no @: read as a port
        ("redis://h:70000/0", "its port is not a number"),
        (f"redis://:{PASSWORD}@h:6379/zero", "its path is not a database number"),
        (f"redis://:{PASSWORD}@h/0?socket_timeout=soon", "redis-py cannot read its options"),
        (f"redis://:{PASSWORD}@[::1:6379/0", "it does not parse as a URL"),
        ("unix://", "unix:// needs a socket path"),
        (f"unix://:{PASSWORD}@/run/redis.sock?socket_timeout=abc", "redis-py cannot read"),
    ],
)
@pytest.mark.parametrize(
    "user",
    [
        pytest.param({"result_cache": "redis"}, id="result-cache"),
        pytest.param({"api_key_store": "redis"}, id="key-store"),
    ],
)
def test_a_redis_url_in_use_that_redis_py_cannot_read_is_a_settings_error(
    url: str, says: str, user: dict[str, Any]
) -> None:
    """A result cache's malformed URL failed in the lifespan: a traceback and exit 3 or 134."""
    line = refusal(redis_url=url, **user)
    assert line == f"FRAMEWORM_REDIS_URL: {says}" or line.startswith(f"FRAMEWORM_REDIS_URL: {says}")
    assert PASSWORD not in line


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:pw@redis.internal/3",
        "rediss://user:pw@redis.internal:6380",
        "redis://[::1]:6379",
        "unix:///run/redis.sock?db=2",
    ],
)
def test_redis_urls_redis_py_reads_are_accepted(url: str) -> None:
    assert Settings(result_cache="redis", redis_url=url).redis_url is not None


def test_a_redis_url_nothing_uses_is_not_checked() -> None:
    assert Settings(redis_url="localhost:6379").redis_url is not None


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("redis://127.0.0.1:notaport/0", "its port is not a number"),
        (
            "bogus://",
            "bogus:// is not supported: use memory://, redis://, rediss:// or redis+unix://",
        ),
        ("redis+unix://", "redis+unix:// needs a socket path"),
        ("redis+unix:///run/redis.sock?socket_timeout=abc", "redis-py cannot read its options"),
        ("async+rediss://h:6379/x", "its path is not a database number"),
    ],
)
def test_a_rate_limit_storage_that_cannot_be_read_is_a_settings_error(uri: str, says: str) -> None:
    """Parsed at the first request, it failed there, as if Redis were down: rate limiting failed
    open, silently, for good."""
    assert refusal(rate_limit_storage=uri).startswith(f"FRAMEWORM_RATE_LIMIT_STORAGE: {says}")
    assert Settings(rate_limit_storage=uri, rate_limit_enabled=False).rate_limit_enabled is False


@pytest.mark.parametrize(
    "uri",
    [
        "memory://",
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@r:6380/1",
        "redis+unix:///run/redis.sock",
        "async+redis://r:6379",
    ],
)
def test_the_rate_limit_storages_the_limiter_takes_are_accepted(uri: str) -> None:
    assert Settings(rate_limit_storage=uri).rate_limit_storage == uri


@pytest.mark.parametrize("host", ["", "  "])
def test_an_empty_host_is_refused_not_taken_for_every_interface(host: str) -> None:
    assert refusal(host=host) == (
        "FRAMEWORM_HOST: empty, which listens on every interface: write 0.0.0.0 or :: for that"
    )
    assert Settings(host="0.0.0.0").host == "0.0.0.0"


def test_the_key_store_file_expands_a_tilde_as_the_registry_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`~/keys.json` made a directory named `~` in the working directory, pepper included."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / ".env").write_text("FRAMEWORM_API_KEYS_FILE=~/keys.json\n")
    settings = Settings()
    assert settings.api_keys_file == tmp_path / "home" / "keys.json"
    assert settings.home == tmp_path / "home"


@pytest.mark.parametrize("path", ["", " "])
def test_an_empty_key_store_file_is_refused(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """An empty path is `.` to pathlib: the pepper was written to ./pepper before the failure."""
    monkeypatch.setenv("FRAMEWORM_API_KEYS_FILE", path)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert (
        settings_message(caught.value)
        == "FRAMEWORM_API_KEYS_FILE: empty: name the key store's file"
    )


def test_a_secret_file_that_is_not_utf8_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A UnicodeDecodeError named no variable, and quoted the secret's first bad byte."""
    secret = tmp_path / "token"
    secret.write_bytes(b"\xa7\xfe-secret")
    monkeypatch.setenv("FRAMEWORM_METRICS_TOKEN_FILE", str(secret))
    with pytest.raises(ValueError) as caught:
        Settings()
    assert not isinstance(caught.value, UnicodeDecodeError)
    assert str(caught.value) == "FRAMEWORM_METRICS_TOKEN_FILE: the file is not UTF-8 text"


@pytest.mark.parametrize("pepper", ["", "  \n"])
def test_an_empty_pepper_is_refused_as_an_empty_token_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pepper: str
) -> None:
    """In development an empty pepper file gave the pepper '': every key's HMAC of no key."""
    secret = tmp_path / "pepper"
    secret.write_text(pepper)
    monkeypatch.setenv("FRAMEWORM_API_KEY_PEPPER_FILE", str(secret))
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert settings_message(caught.value) == (
        "FRAMEWORM_API_KEY_PEPPER: the API key pepper is empty: unset it or give it a value"
    )
    assert Settings(api_key_pepper="pépper with spaces").api_key_pepper is not None  # any text


def test_a_result_cache_ttl_redis_would_refuse_is_a_settings_error() -> None:
    """Redis refuses an expiry past about 9.2e15 s from now: every write failed, each warned."""
    assert refusal(result_cache_ttl_s=10**16).startswith("FRAMEWORM_RESULT_CACHE_TTL_S: ")
    assert Settings(result_cache_ttl_s=10**15).result_cache_ttl_s == 10**15


@pytest.mark.parametrize("endpoint", ["http://[collector:4317", "http://collector:grpc"])
def test_an_otlp_endpoint_that_does_not_parse_is_a_settings_error(endpoint: str) -> None:
    """Found by the exporter in each worker's app: "Invalid IPv6 URL", naming no variable."""
    assert refusal(otlp_endpoint=endpoint) == (
        "FRAMEWORM_OTLP_ENDPOINT: its host or port does not parse: write http://HOST:PORT"
    )
    assert Settings(otlp_endpoint="collector:4317").otlp_endpoint == "collector:4317"


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://user:secret@collector:4317",  # dialled as a host name, logged at each failure
        "http://collector:4318/?token=secret",  # /v1/traces went after the query, logged too
        "http://collector:4318/#part",
        "http://collector:4318?",  # an empty query: /v1/traces went after the "?" all the same
    ],
)
def test_credentials_or_a_query_in_the_otlp_endpoint_are_a_settings_error(endpoint: str) -> None:
    message = refusal(otlp_endpoint=endpoint)
    assert message.startswith("FRAMEWORM_OTLP_ENDPOINT: a user, password or query")
    assert "OTEL_EXPORTER_OTLP_HEADERS" in message
    assert "secret" not in message


@pytest.mark.parametrize(
    ("endpoint", "protocol"),
    [("http://collector:4318", "http"), ("collector:4318", "http"), ("collector:4317", "grpc")],
)
def test_the_otlp_protocol_follows_the_port_unless_set(endpoint: str, protocol: str) -> None:
    """Its default was "grpc", which always overrode the port: spans for an OTLP/HTTP collector
    on 4318 went out as gRPC and were all lost."""
    settings = Settings(otlp_endpoint=endpoint)
    assert settings.otlp_protocol is None
    assert resolve_protocol(endpoint, settings.otlp_protocol) == protocol
    assert resolve_protocol(endpoint, Settings(otlp_protocol="grpc").otlp_protocol) == "grpc"


def test_a_shutdown_timeout_no_drain_could_wait_is_a_settings_error() -> None:
    """1e12 passed the settings and failed in GracefulShutdown, naming no variable."""
    assert refusal(shutdown_timeout_s=1e12).startswith("FRAMEWORM_SHUTDOWN_TIMEOUT_S: ")
