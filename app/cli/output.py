"""How the CLI speaks: human lines by default, JSON with --json, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import ValidationError

from app.production.keystore import KeyFileError, ReadOnlyKeyStoreError
from models.errors import RegistryError, validation_message

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


def emit(payload: Any, as_json: bool, human: Callable[[], str]) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else human())


def table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """Rows as aligned columns under upper-case headers; a missing value is "-"."""
    if not rows:
        return "(none)"
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def errors_as_one_line() -> Iterator[None]:
    """Expected failures end the command with one clear line and a non-zero exit, no traceback."""
    try:
        yield
    except ValidationError as exc:
        fail(settings_message(exc) if exc.title == "Settings" else validation_message(exc))
    except (RegistryError, KeyFileError, ReadOnlyKeyStoreError, ValueError, OSError) as exc:
        fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if not _is_redis_error(exc):
            raise
        fail(f"Redis: {exc}")


def settings_message(exc: ValidationError) -> str:
    """Every settings problem at once, each named as the operator set it (FRAMEWORM_PORT)."""
    problems = []
    for error in exc.errors(include_url=False):
        where = "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"FRAMEWORM_{where}: {message}" if where else message)
    return "; ".join(problems)


def _is_redis_error(exc: Exception) -> bool:
    """A Redis key store or cache that cannot be reached (redis is imported only when used)."""
    exceptions = sys.modules.get("redis.exceptions")
    return exceptions is not None and isinstance(exc, exceptions.RedisError)
