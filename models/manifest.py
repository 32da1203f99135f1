"""ModelManifest: what a registered model version is, and the signature it serves.

A manifest is written once, when the version is registered, and never changed afterwards;
what moves (stage aliases, a version's archived status, the history) lives in the model's
index (`models.registry.ModelIndex`), so an immutable manifest can be cached and copied freely.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from models.errors import InvalidNameError

SCHEMA_VERSION: Literal[1] = 1

# Names become directory names in the store: a conservative allow-list keeps them from ever
# escaping the root ("../x", "/abs", "a/b") or colliding on case-insensitive filesystems.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Semantic Versioning 2.0.0, without build metadata ("+...") which would not order. ASCII
# digits only (Python's \d matches any script's), and numeric identifiers without leading
# zeros, as the spec requires: "1.0.0-alpha.01" and "1.0.0-alpha.1" would otherwise both exist
# and sort as equals.
_NUMBER = r"0|[1-9][0-9]*"
_PRE_RELEASE_ID = rf"(?:{_NUMBER}|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
SEMVER_PATTERN = re.compile(
    rf"^({_NUMBER})\.({_NUMBER})\.({_NUMBER})(?:-({_PRE_RELEASE_ID}(?:\.{_PRE_RELEASE_ID})*))?$"
)

Dtype = Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"]
ArtefactFormat = Literal["safetensors", "torch_export", "torchscript"]
Stage = Literal["staging", "production"]
STAGES: tuple[Stage, ...] = ("staging", "production")


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_model_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None and ".." not in name


def check_name(name: str) -> str:
    if not is_model_name(name):
        raise ValueError(
            f"invalid model name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_version(version: str) -> str:
    if not SEMVER_PATTERN.fullmatch(version):
        raise ValueError(
            f"invalid version {version!r}: expected semantic version MAJOR.MINOR.PATCH"
        )
    return version


def check_name_safe(name: str) -> str:
    """`check_name`, refusing with the registry's InvalidNameError."""
    try:
        return check_name(name)
    except ValueError as exc:
        raise InvalidNameError(str(exc)) from None


def check_version_safe(version: str) -> str:
    """`check_version`, refusing with the registry's InvalidNameError."""
    try:
        return check_version(version)
    except ValueError as exc:
        raise InvalidNameError(str(exc)) from None


def version_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
    """Sort key giving semver precedence (a pre-release sorts before its release)."""
    match = SEMVER_PATTERN.fullmatch(version)
    if match is None:
        raise ValueError(f"invalid version {version!r}")
    major, minor, patch, pre = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    # Semver 2.0 section 11: pre-release identifiers compare one by one, numeric ones as numbers
    # and before alphanumeric ones; with all equal, fewer identifiers first (as tuples compare).
    identifiers = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0, identifiers)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSpec(_Strict):
    """How an encoded image becomes this tensor: decoded, converted, resized, scaled."""

    mode: Literal["L", "RGB"] = "L"
    height: int = Field(gt=0, le=8192)
    width: int = Field(gt=0, le=8192)
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    max_size_mb: float = Field(default=10.0, gt=0)
    # Decompression bombs: refuse images whose header declares more pixels than this.
    max_pixels: int = Field(default=4096 * 4096, gt=0)
    scale: float = 1.0 / 255.0
    invert: bool = False


class TensorSpec(_Strict):
    """One named input or output. `shape[0] == -1` is the batch dimension."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
    dtype: Dtype = "float32"
    shape: tuple[int, ...]
    allow_non_finite: bool = False
    image: ImageSpec | None = None
    # For generative models: when the request omits this input, the server draws it from
    # N(0, 1) with the request's `batch_size` and `seed` parameters.
    generate: Literal["standard_normal"] | None = None
    description: str = ""

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if not shape or shape[0] != -1:
            raise ValueError("shape must start with -1, the batch dimension")
        if any(d < 1 for d in shape[1:]):
            raise ValueError("only the batch dimension may be -1; other dimensions must be >= 1")
        return shape


def image_input_problem(spec: TensorSpec) -> str | None:
    """Why images could never fill this input, or None. An image is decoded to floats, channels
    first: a spec that disagrees was registered and served, and every image refused with a 422
    blaming the client. Checked when a version is registered, not when a stored manifest is
    read: a version registered before this check keeps loading (for its array inputs)."""
    if spec.image is None:
        return None
    channels = 1 if spec.image.mode == "L" else 3
    wanted = (-1, channels, spec.image.height, spec.image.width)
    if spec.shape != wanted:
        return (
            f"image input {spec.name!r}: shape must be {list(wanted)} (batch, channels of "
            f"mode {spec.image.mode}, height, width), not {list(spec.shape)}"
        )
    if not spec.dtype.startswith(("float", "bfloat")):
        return f"image input {spec.name!r}: images are scaled to floats, not {spec.dtype}"
    return None


class ParameterSpec(_Strict):
    """A request parameter the model understands, with its bounds."""

    type: Literal["int", "float", "bool", "str"]
    minimum: float | None = None
    maximum: float | None = None
    default: int | float | bool | str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _usable_bounds(self) -> ParameterSpec:
        # Refused here, when the manifest is made or read, not at the first request: NaN
        # compares False with everything (a NaN bound would switch the check off), and the
        # request validator refuses both, which at request time would be a 500 every time.
        # An infinite bound is kept: it means no limit that way.
        for name, bound in (("minimum", self.minimum), ("maximum", self.maximum)):
            if bound is not None and math.isnan(bound):
                raise ValueError(f"parameter {name} must not be NaN")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("parameter minimum is above its maximum")
        return self


class Signature(_Strict):
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    # The largest number of items one request may carry along the batch dimension.
    max_items_per_request: int = Field(default=128, gt=0)

    @model_validator(mode="after")
    def _unique_names(self) -> Signature:
        for group in (self.inputs, self.outputs):
            names = [spec.name for spec in group]
            if len(names) != len(set(names)):
                raise ValueError(f"duplicate tensor names in {names}")
        if any(spec.generate for spec in self.inputs) and "batch_size" not in self.parameters:
            raise ValueError("a generated input needs a 'batch_size' parameter")
        return self

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


class GoldenCheck(_Strict):
    """An input with the output the model must give for it, within a tolerance."""

    name: str = "golden"
    inputs: dict[str, Any]
    parameters: dict[str, Any] = Field(default_factory=dict)
    expected: dict[str, Any]
    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-4, ge=0)


# A golden check's `seed` seeds a torch.Generator, which takes a 64-bit integer.
SEEDS = range(-(2**63), 2**63)


def golden_problem(check: GoldenCheck, signature: Signature) -> str | None:
    """Why a golden check would pass while checking nothing (a misspelt input or output is
    skipped, an empty `expected` compares nothing), or could not run, or None. Checked when a
    version is registered, as `image_input_problem` is: stored manifests keep loading."""
    where = f"golden check {check.name!r}"
    named = (
        ("input", check.inputs, signature.inputs),
        ("output", check.expected, signature.outputs),
    )
    for kind, given, specs in named:
        names = [spec.name for spec in specs]
        if unknown := [key for key in given if key not in names]:
            return (
                f"{where}: the signature has no {kind} {unknown[0]!r} "
                f"(its {kind}s: {', '.join(names)})"
            )
    if not check.expected:
        return f"{where}: 'expected' names no output, so the check would compare nothing"
    batch, seed = check.parameters.get("batch_size", 1), check.parameters.get("seed")
    most = signature.max_items_per_request
    if type(batch) is not int or not 1 <= batch <= most:  # type(): a JSON true is no batch size
        return f"{where}: parameter batch_size must be an integer from 1 to {most}"
    if seed is not None and (type(seed) is not int or seed not in SEEDS):
        return f"{where}: parameter seed must be a 64-bit integer"
    return None


def non_finite_number(value: Any) -> tuple[str, float] | None:
    """The first NaN or infinity in nested dicts and lists, with its dotted path, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # not recursive: metadata may be nested hundreds of levels deep
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path, item
        if isinstance(item, dict):
            children = list(item.items())
        elif isinstance(item, list | tuple):
            children = list(enumerate(item))
        else:
            continue
        stack.extend((f"{path}.{key}" if path else str(key), c) for key, c in reversed(children))
    return None


class ModelManifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: Annotated[str, Field(min_length=1)]
    version: str
    format: ArtefactFormat
    artefact: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="file name inside the version")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    # For safetensors artefacts: the architecture in models/families and its arguments.
    family: str | None = None
    family_config: dict[str, Any] = Field(default_factory=dict)
    signature: Signature
    golden: tuple[GoldenCheck, ...] = ()
    deterministic: bool = False
    # TorchScript carries code and has no safe loader: it loads only when marked trusted.
    trusted: bool = False
    created: datetime = Field(default_factory=utcnow)
    created_by: str = ""
    description: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    def identity(self) -> str:
        """A digest of what decides this version's outputs: name, version, the artefact's
        sha256, its architecture, signature, golden checks (everything but who registered it,
        when, and the free-text notes). Two registries may each hold a `cnn-digits 1.0.0` of
        their own; what is kept per version across processes (a shared result cache) is kept
        under this."""
        notes = {"created", "created_by", "description", "metadata"}
        return hashlib.sha256(self.model_dump_json(exclude=notes).encode()).hexdigest()

    def registration_problem(self) -> str | None:
        """Why this manifest may not be registered, beyond its fields' own validation."""
        for spec in self.signature.inputs:
            if (problem := image_input_problem(spec)) is not None:
                return problem
        for check in self.golden:
            if (problem := golden_problem(check, self.signature)) is not None:
                return problem
        # JSON has no NaN or infinity: pydantic writes them as null, so a metadata value would
        # silently become null, and a tolerance of null could never be read back.
        if (found := non_finite_number(self.model_dump())) is not None:
            where, number = found
            return f"{where} is {number}: a manifest is JSON, which has no NaN or infinity"
        # pydantic writes JSON of any depth it can but reads it back only to 200 levels: a
        # version registered deeper could never be read again, nor registered anew.
        try:
            type(self).model_validate_json(self.model_dump_json())
        except ValidationError:
            return "metadata or family_config is nested too deeply to be stored"
        return None

    def fields_differing_from(self, other: ModelManifest, ignore: set[str]) -> list[str]:
        """The fields, but those in `ignore`, whose values differ, compared as stored (JSON: a
        tuple given is the list read back)."""
        mine = self.model_dump(mode="json", exclude=ignore)
        theirs = other.model_dump(mode="json", exclude=ignore)
        return [field for field in mine if mine[field] != theirs[field]]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        return check_version(value)

    @model_validator(mode="after")
    def _format_rules(self) -> ModelManifest:
        if self.format == "safetensors" and not self.family:
            raise ValueError("a safetensors artefact needs a model family")
        if self.format == "torchscript" and not self.trusted:
            raise ValueError(
                "TorchScript artefacts carry code: register them as trusted "
                "(--trusted, or trusted=True)"
            )
        return self
