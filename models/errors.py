"""Errors of the model side. Each carries what a caller needs to say what went wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the benchmark's peers import the model families in venvs without pydantic
    from pydantic import ValidationError


class RegistryError(Exception):
    """Base class: a registry operation could not be done as asked."""


class InvalidNameError(RegistryError, ValueError):
    """A model name, version or storage key that is not allowed (it could escape the root)."""


class ModelNotFoundError(RegistryError, LookupError):
    def __init__(self, name: str, version: str | None = None, stage: str | None = None) -> None:
        self.name, self.version, self.stage = name, version, stage
        if version is not None:
            what = f"version {version} of model {name!r}"
        elif stage is not None:
            what = f"a {stage} version of model {name!r}"
        else:
            what = f"model {name!r}"
        super().__init__(f"{what} is not registered")


class VersionExistsError(RegistryError):
    def __init__(self, name: str, version: str, detail: str = "") -> None:
        self.name, self.version = name, version
        message = f"model {name!r} already has version {version}; versions are immutable"
        super().__init__(f"{message} ({detail})" if detail else message)


class StageError(RegistryError):
    """A stage move the stage model does not allow (e.g. rollback with no earlier version)."""


class ConflictError(RegistryError):
    """Someone else changed the model's index first (compare-and-swap lost).

    A stage move wrote nothing. A registration that lost every retry left its version stored but
    not registered (never resolved or served); registering it again as it was (the same bytes
    and manifest) finishes it.
    """


class IntegrityError(RegistryError):
    """An artefact's bytes no longer match the sha256 recorded when it was registered."""

    def __init__(self, key: str, expected: str, actual: str | None) -> None:
        self.key, self.expected, self.actual = key, expected, actual
        if actual is None:
            message = f"artefact {key} is missing from the registry"
        else:
            message = (
                f"artefact {key} is corrupted or tampered with: its sha256 {actual[:12]}... "
                f"does not match the registered {expected[:12]}..."
            )
        super().__init__(message)


class ArtefactSizeError(IntegrityError):
    """The stored artefact is not the registered size: refused before it is read or downloaded
    (an object of 10 GB put there by mistake filled the cache and the memory first)."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        RegistryError.__init__(
            self,
            f"artefact {key} is corrupted or tampered with: it is {actual} bytes, "
            f"registered as {expected}",
        )
        self.key = key


class CorruptObjectError(RegistryError, ValueError):
    """A registry object (an index or a manifest) that does not parse, or whose content does not
    match where it is stored: a manifest under a/1.0.0 that names b 2.0.0 would point at b's
    artefact. The message names the key."""


class AccessDeniedError(RegistryError):
    """The store refused these credentials an object (S3's 403): one object unreadable, as a
    file another user owns is, or the whole registry when every request is refused."""


# What makes one registry object unreadable, the registry itself being fine: a listing shows it
# as such and goes on (InvalidNameError: a symlink out of the root, say).
UNREADABLE = (CorruptObjectError, InvalidNameError, AccessDeniedError, OSError)


class ArtefactError(RegistryError):
    """An artefact that cannot be loaded safely or does not fit its signature."""


class GoldenCheckError(RegistryError):
    """The model's output for a golden input is not the expected one."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one bounded line (torch's and pydantic's span many): its first
    line, or, when that only introduces what follows (torch's "Error(s) in loading state_dict
    for CNN:"), it and the lines after it, joined."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= 300 else text[:299] + "…"


def validation_message(exc: ValidationError) -> str:
    """pydantic's report (many lines, with a URL) as one line: the first field and its problem."""
    errors = exc.errors(include_url=False)
    if not errors:
        return first_line(exc)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"
