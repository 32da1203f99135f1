"""Secrets from files: `FRAMEWORM_<NAME>_FILE=/path` (a mounted Kubernetes Secret, a Vault agent
file) for each setting that holds a secret; it wins over `FRAMEWORM_<NAME>`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

# Settings that hold secrets: each may be given as FRAMEWORM_<NAME>_FILE.
SECRET_FIELDS = (
    "api_key_pepper",
    "bootstrap_api_key",
    "redis_url",
    "rate_limit_storage",  # a redis:// URL may carry a password
    "metrics_token",
    "sentry_dsn",
)


class SecretFiles(PydanticBaseSettingsSource):
    """`FRAMEWORM_<NAME>_FILE` for each secret, set in the environment or in the `.env` file the
    settings read (the dotenv source's variables); the file's content is the value."""

    def __init__(self, settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.dotenv_vars: dict[str, str | None] = getattr(dotenv, "env_vars", {})

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads them all at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        # In any case, as the settings read their names: `frameworm_metrics_token_file` was
        # taken for a known setting, never read, and left /metrics open.
        environ = {key.upper(): value for key, value in os.environ.items()}
        for field in SECRET_FIELDS:
            name = f"FRAMEWORM_{field.upper()}_FILE"
            path = os.environ.get(name) or environ.get(name) or self.dotenv_vars.get(name.lower())
            if path:
                try:
                    values[field] = Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ValueError(f"{name} cannot be read: {exc}") from None
                except UnicodeDecodeError:  # its message would quote the secret's bytes
                    raise ValueError(f"{name}: the file is not UTF-8 text") from None
        return values
