"""How the CLI speaks: human lines by default, JSON with --json, one-line errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from pydantic import ValidationError

from app.production.keystore import KeyFileError
from models.errors import RegistryError

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


def emit(payload: Any, as_json: bool, human: Callable[[], str]) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str) if as_json else human())


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def errors_as_one_line() -> Iterator[None]:
    """Expected failures end the command with one clear line and a non-zero exit, no traceback."""
    try:
        yield
    except (RegistryError, KeyFileError, ValueError, OSError) as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            fail(f"{where}: {first['msg']}" if where else first["msg"])
        fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        sys.exit(130)
