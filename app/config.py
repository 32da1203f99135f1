"""Settings: one typed model, read from FRAMEWORM_* environment variables.

Secrets may also come from files: `FRAMEWORM_<NAME>_FILE=/path` (a mounted Kubernetes Secret,
a Vault agent file) wins over `FRAMEWORM_<NAME>`. Settings are built in `create_app` and the CLI,
never at import time.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.secret_files import SecretFiles
from app.setting_checks import limit_problem, redis_url_problem
from models.manifest import check_name, check_version

Environment = Literal["development", "production"]
KeyStoreKind = Literal["file", "redis", "hashed-file"]

DEFAULT_HOME = Path.home() / ".frameworm"
ENV_FILE = ".env"  # read from the working directory, beside the environment


class Settings(BaseSettings):
    """Every setting of the server, with its default. README's table lists them all."""

    model_config = SettingsConfigDict(
        env_prefix="FRAMEWORM_",
        env_file=ENV_FILE,
        extra="ignore",
        frozen=True,
        # Validation errors must never print the input: it holds the secrets.
        hide_input_in_errors=True,
        # A timeout or size of inf passes `gt=0` and breaks arithmetic later (int(inf)).
        allow_inf_nan=False,
    )

    env: Environment = "development"

    # Model and registry
    registry: str = str(DEFAULT_HOME / "registry")
    model: str = "cnn-digits"
    stage: Literal["production", "staging"] = "production"
    model_version: str | None = None
    device: str = "auto"
    # TF32 on CUDA: faster float32 convolutions and matmuls, about 1e-3 relative error.
    cuda_tf32: bool = False
    seed_demo: bool = Field(default=True, description="seed the demo models into an empty registry")
    # TorchScript carries code; its manifest's `trusted` flag is only as safe as write access
    # to the registry, so a server loads it only when its operator says so too.
    allow_torchscript: bool = False
    follow_stage: bool = False
    # At least 0.1 s: each poll reads the registry (a GET per poll on S3); less is a busy loop.
    follow_interval_s: float = Field(default=5.0, ge=0.1)
    load_retries: int = Field(default=3, ge=1)
    # Automatic rollback after a followed promotion (opt-in; never writes to the registry).
    auto_rollback: bool = False
    rollback_window_s: float = Field(default=120.0, gt=0)
    rollback_min_requests: int = Field(default=20, ge=1)
    rollback_max_error_rate: float = Field(default=0.05, ge=0, le=1)
    rollback_max_p99_ms: float | None = Field(default=None, gt=0)
    warmup: bool = True

    # Serving
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Upper bounds: a typo of an extra digit forks thousands of processes, or starts
    # thousands of OpenMP threads, each with its own copy of the model or stack.
    workers: int = Field(default=1, ge=1, le=256)
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_batch_delay_ms: float = Field(default=5.0, ge=0)
    max_queue_items: int = Field(default=2048, ge=1)
    request_timeout_ms: float = Field(default=10_000, gt=0)
    max_concurrency: int = Field(default=1024, ge=1)
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    # glibc: keep freed batch memory for the next batch (app/inference/allocator.py).
    retain_freed_memory: bool = True
    # On the CPU, models with 2-D convolutions run channels-last when outputs allow it.
    cpu_channels_last: bool = True
    result_cache: Literal["off", "memory", "redis"] = "off"
    result_cache_entries: int = Field(default=10_000, ge=1)
    result_cache_max_mb: int = Field(default=256, ge=1)
    # Redis refuses an expiry whose milliseconds from now overflow 64 bits (about 9.2e15 s).
    result_cache_ttl_s: int = Field(default=3600, ge=1, le=10**15)
    # A Redis lookup's bound, a new connection's set-up included: past it, a miss.
    result_cache_timeout_ms: float = Field(default=50.0, gt=0, le=60_000)

    # Request limits
    # At least about a KB; at most a TB (past about 8.8e12, zlib's bound overflowed: a 500).
    max_body_mb: float = Field(default=10.0, ge=0.001, le=1024 * 1024)
    max_header_kb: int = Field(default=64, ge=1)
    write_stall_s: float = Field(default=30.0, gt=0)
    # Idle keep-alive connections close after this. Behind a proxy that reuses upstream
    # connections, it must exceed the proxy's own idle timeout (ingress-nginx: 60 s), or the
    # proxy sends a request on a connection the server is closing and answers 502.
    keep_alive_s: float = Field(default=5.0, gt=0)
    # Once its first byte has arrived, the request line and headers must be whole within this
    # (nginx's client_header_timeout): a client trickling a head cannot hold a connection.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_json_depth: int = Field(default=32, ge=2)
    max_json_elements: int = Field(default=4_000_000, ge=1)

    # Auth and rate limits
    auth_enabled: bool = True
    api_key_store: KeyStoreKind = "file"
    api_keys_file: Path = DEFAULT_HOME / "api-keys.json"
    api_key_pepper: SecretStr | None = None
    bootstrap_api_key: SecretStr | None = None
    redis_url: SecretStr | None = None
    rate_limit_enabled: bool = True
    rate_limit: str = "100/minute"
    rate_limit_storage: str = "memory://"
    rate_limit_fail_open: bool = True
    # Bounds one Redis round trip, the wait for a pooled connection included.
    rate_limit_timeout_s: float = Field(default=1.0, gt=0)
    auth_failure_limit: str = "20/minute"
    forwarded_allow_ips: str = "127.0.0.1"
    metrics_token: SecretStr | None = None

    # Observability
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_enabled: bool = True
    otlp_endpoint: str | None = None
    otlp_protocol: Literal["grpc", "http"] | None = None  # None: by the endpoint's port
    trace_sample_ratio: float = Field(default=0.01, ge=0, le=1)
    sentry_dsn: SecretStr | None = None
    enable_docs: bool = False

    # Lifecycle
    drain_delay_s: float = Field(default=5.0, ge=0)
    shutdown_timeout_s: float = Field(default=20.0, gt=0, le=86_400)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A secret's _FILE wins over its plain variable, wherever either is set.
        secret_files = SecretFiles(settings_cls, dotenv_settings)
        return init_settings, secret_files, env_settings, dotenv_settings, file_secret_settings

    @field_validator("sentry_dsn")
    @classmethod
    def _dsn(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here (sentry-sdk would refuse it only once the app is built, after the port
        # is bound); the DSN holds a key, so the message never shows it.
        if value is None:
            return None
        try:
            parts = urlsplit(value.get_secret_value())
            parts.port  # noqa: B018  # raises ValueError for a port out of range or not a number
        except ValueError:
            parts = urlsplit("")
        # sentry-sdk reads the project as the path's last part, a number (`/1/` has none).
        project = parts.path.rsplit("/", 1)[-1]
        if parts.scheme not in ("http", "https") or not (
            parts.username and parts.hostname and project.isascii() and project.isdigit()
        ):
            raise ValueError("not a Sentry DSN of the form https://KEY@HOST/PROJECT")
        return value

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str) -> str:
        # Empty is "." to pathlib: the demo models were seeded into the working directory.
        if not value.strip():
            raise ValueError("empty: name the registry's directory or s3://bucket/prefix")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return check_name(value)  # a typo here was three failed loads and exit 3, not one line

    @field_validator("model_version", mode="before")
    @classmethod
    def _model_version(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None  # empty, as the chart writes an unpinned version: the stage decides
        return check_version(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _batch_delay_within_timeout(self) -> Settings:
        # A request waiting for its batch to fill would wait out its own deadline (a 504 for
        # every request after a batch of several items).
        if self.max_batch_delay_ms >= self.request_timeout_ms:
            raise ValueError(
                "FRAMEWORM_MAX_BATCH_DELAY_MS must be below FRAMEWORM_REQUEST_TIMEOUT_MS"
            )
        return self

    @model_validator(mode="after")
    def _what_is_used_is_complete(self) -> Settings:
        """Settings that only matter when their feature is on are checked only then."""
        limits = {"FRAMEWORM_AUTH_FAILURE_LIMIT": self.auth_failure_limit}  # always in use
        if self.rate_limit_enabled:
            limits["FRAMEWORM_RATE_LIMIT"] = self.rate_limit
        for name, value in limits.items():
            if (problem := limit_problem(value)) is not None:
                raise ValueError(f"{name}: {problem}")
        users = [
            name
            for name, uses in (
                ("FRAMEWORM_RESULT_CACHE=redis", self.result_cache == "redis"),
                (
                    "FRAMEWORM_API_KEY_STORE=redis",
                    self.auth_enabled and self.api_key_store == "redis",
                ),
            )
            if uses
        ]
        if users and self.redis_url is None:
            raise ValueError(f"{' and '.join(users)} needs FRAMEWORM_REDIS_URL")
        url = self.redis_url.get_secret_value() if users and self.redis_url is not None else None
        if url is not None and (problem := redis_url_problem(url)):
            raise ValueError(f"FRAMEWORM_REDIS_URL: {problem}")
        if self.rate_limit_enabled:
            # Parsed here: a malformed URL found at the first request was taken for an outage.
            from app.production.ratelimit import STORAGE_SCHEMES, url_scheme

            storage = self.rate_limit_storage.removeprefix("async+")
            if STORAGE_SCHEMES.get(url_scheme(storage).removesuffix("://")) != "memory" and (
                problem := redis_url_problem(storage, tuple(STORAGE_SCHEMES))
            ):
                raise ValueError(f"FRAMEWORM_RATE_LIMIT_STORAGE: {problem}")
        return self

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # An empty host binds every interface: that must be asked for by name.
        if not value.strip():
            raise ValueError(
                "empty, which listens on every interface: write 0.0.0.0 or :: for that"
            )
        return value

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _keys_file_is_named(cls, value: Any) -> Any:
        # An empty path is "." to pathlib: the pepper was written to ./pepper before a failure.
        if isinstance(value, str | Path) and not str(value).strip():
            raise ValueError("empty: name the key store's file")
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_at_home(cls, value: Path) -> Path:
        return value.expanduser()  # as FRAMEWORM_REGISTRY: not a directory named "~"

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        if not value:
            return value
        # Imported here: app.production imports every block (and the OpenTelemetry SDK).
        from app.production.otlp_endpoint import endpoint_problem

        if (problem := endpoint_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _ips(cls, value: str) -> str:
        for item in filter(None, (v.strip() for v in value.split(","))):
            if item != "*":
                ipaddress.ip_network(item, strict=False)  # raises ValueError when malformed
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        # Checked here, so that a typo or a missing GPU is one settings error at start, not a
        # traceback from the model load (and the load's exit code).
        if value in ("auto", "cpu"):
            return value
        if value.startswith("cpu:"):  # labelled cpu:7 in metrics
            raise ValueError(f"{value!r}: the CPU has no index: use cpu")
        if not re.fullmatch(r"cuda(:[0-9]+)?", value):
            raise ValueError(f"{value!r}: Frameworm serves on auto, cpu, cuda or cuda:N")
        # Only for CUDA: the --workers supervisor of CPU workers never loads torch (200 MB).
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"{value!r}: CUDA is not available on this machine")
        return value

    @field_validator("metrics_token", "bootstrap_api_key", "api_key_pepper")
    @classmethod
    def _token_is_usable(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # An empty metrics token (an empty secret mounted as the _FILE) would make "Bearer "
        # the password: /metrics would look protected and be open; an empty bootstrap key left
        # a development server with no key and no word why; an empty pepper made every key's
        # HMAC one of an empty key. Unset it, or give it a value.
        if value is None:
            return value
        what = f"the {(info.field_name or '').replace('_', ' ').replace('api', 'API')}"
        secret = value.get_secret_value()
        if not secret.strip():
            raise ValueError(f"{what} is empty: unset it or give it a value")
        # Headers arrive as bytes that clients encode as they please (curl: UTF-8); a secret
        # outside printable ASCII matched only some of them, or none. Whitespace around a
        # header value is not part of it (RFC 9110 5.5). The pepper is never sent: any text.
        if info.field_name != "api_key_pepper" and (
            not (secret.isascii() and secret.isprintable()) or secret != secret.strip()
        ):
            raise ValueError(f"{what} must be printable ASCII, without spaces around it")
        return value

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.env != "production":
            return self
        problems = []
        if not self.auth_enabled:
            problems.append("auth is off (FRAMEWORM_AUTH_ENABLED=false)")
        if self.api_key_pepper is None:
            problems.append("no API key pepper (set FRAMEWORM_API_KEY_PEPPER_FILE from a secret)")
        elif len(self.api_key_pepper.get_secret_value()) < 32:
            problems.append("the API key pepper is shorter than 32 characters")
        if (
            self.bootstrap_api_key is not None
            and len(self.bootstrap_api_key.get_secret_value()) < 32
        ):
            # The failed-authentication limit slows guessing; it cannot save a short key.
            problems.append("the bootstrap API key is shorter than 32 characters")
        if self.metrics_token is not None and len(self.metrics_token.get_secret_value()) < 32:
            problems.append("the metrics token is shorter than 32 characters")
        if self.enable_docs:
            problems.append("the OpenAPI docs are on (FRAMEWORM_ENABLE_DOCS=true)")
        if problems:
            raise ValueError("unsafe settings for FRAMEWORM_ENV=production: " + "; ".join(problems))
        return self

    @property
    def served_as(self) -> str:  # frameworm_model_info's stage: a pinned version is under none
        return self.stage if self.model_version is None else "pinned"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def home(self) -> Path:
        return self.api_keys_file.parent
