"""What `frameworm registry register` reads besides the artefact: JSON files, JSON options and
the artefact's format. Each failure is one line naming the file or option (`fail`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.cli.output import fail
from models.manifest import ArtefactFormat

FORMATS: tuple[ArtefactFormat, ...] = ("safetensors", "torch_export", "torchscript")
SUFFIXES: dict[str, ArtefactFormat] = {".safetensors": "safetensors", ".pt2": "torch_export"}


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        fail(f"cannot read {what} {path}: {exc}")


def json_option(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        fail(f"{option} is not JSON: {exc}")


def artefact_format(given: str, path: Path) -> ArtefactFormat:
    """The format named by --format, else the one the artefact's suffix says."""
    if not path.is_file():  # said first: a directory's suffix tells nothing
        fail(f"artefact {path} is not a file")
    if given:
        if given not in FORMATS:
            fail(f"unknown format {given!r}; formats are {', '.join(FORMATS)}")
        return given
    if path.suffix not in SUFFIXES:
        fail(f"cannot tell the format of {path.name}; pass --format")
    return SUFFIXES[path.suffix]
