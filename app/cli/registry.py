"""`frameworm registry ...`: register, list, show, promote, rollback, archive, verify, history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import TypeAdapter, ValidationError

from app.cli.inputs import artefact_format, json_option, read_json
from app.cli.output import JsonOption, emit, errors_as_one_line, fail, table, warn
from app.config import Settings
from models.errors import UNREADABLE, RegistryError, validation_message
from models.manifest import GoldenCheck, Signature, Stage, check_name_safe, check_version_safe
from models.stages import rollback_target
from models.store import LocalStore

if TYPE_CHECKING:
    from models.registry import ModelRegistry

registry_app = typer.Typer(
    help="Model versions, stage aliases (staging, production) and their history.",
    no_args_is_help=True,
)

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry", envvar="FRAMEWORM_REGISTRY", help="Registry directory or s3:// URL."
    ),
]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who does this (default: user).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why, for the history.")]
GOLDEN_CHECKS = TypeAdapter(list[GoldenCheck])  # a golden file is a JSON list of checks


def open_registry(
    location: str | None, *, must_exist: bool = False, option: str = "--registry"
) -> ModelRegistry:
    """The registry at LOCATION (default FRAMEWORM_REGISTRY), given as OPTION.

    `must_exist` for commands that only read (a copy's source too): a local registry that is
    not there, or an S3 prefix holding nothing, is an error, not an empty registry, or a
    mistyped path would pass `verify` as a clean backup, or a restore as an empty one. Writers
    (register, a copy's target, the server) create it.
    """
    # Imported here: the registry needs torch, which `frameworm serve --workers N`'s supervisor
    # (this CLI, serving nothing itself) would otherwise hold in memory (about 240 MiB).
    from models.registry import ModelRegistry

    # An empty one is refused, as FRAMEWORM_REGISTRY="" is: `--registry "$REG"` with REG unset
    # registered, promoted and rolled back in the default registry.
    if location is not None and not location.strip():
        fail(f"{option}: empty: name the registry's directory or s3://bucket/prefix")
    registry = ModelRegistry(location if location is not None else Settings().registry)
    store = registry.store
    if must_exist and isinstance(store, LocalStore) and not store.root.is_dir():
        fail(f"no registry at {store.url}: the directory does not exist")
    if must_exist and not isinstance(store, LocalStore) and not store.list(""):
        fail(f"no registry at {store.url}: nothing is stored under that prefix")
    return registry


def _golden_checks(path: Path) -> tuple[GoldenCheck, ...]:
    try:
        return tuple(GOLDEN_CHECKS.validate_python(read_json(path, "golden")))
    except ValidationError as exc:
        fail(f"golden file {path} must be a JSON list of checks: {validation_message(exc)}")


@registry_app.command()
def register(
    name: str,
    version: str,
    path: Annotated[Path, typer.Argument(help="The artefact file.")],
    signature: Annotated[Path, typer.Option(help="JSON file: inputs, outputs, parameters.")],
    format: Annotated[str, typer.Option(help="safetensors | torch_export | torchscript")] = "",
    family: Annotated[str | None, typer.Option(help="Architecture for safetensors.")] = None,
    family_config: Annotated[str, typer.Option(help="JSON object of family arguments.")] = "{}",
    golden: Annotated[Path | None, typer.Option(help="JSON list of golden checks.")] = None,
    deterministic: Annotated[bool, typer.Option(help="Same input, same output.")] = False,
    trusted: Annotated[bool, typer.Option(help="Allow TorchScript (it carries code).")] = False,
    description: str = "",
    metadata: Annotated[str, typer.Option(help="JSON object of free-form metadata.")] = "{}",
    actor: ActorOption = None,
    registry: RegistryOption = None,
    as_json: bool = JsonOption,
) -> None:
    """Register an artefact as NAME VERSION after checking it loads and fits its signature."""
    with errors_as_one_line():
        fmt = artefact_format(format, path)
        manifest = open_registry(registry).register(
            name,
            version,
            path,
            format=fmt,
            signature=Signature.model_validate(read_json(signature, "signature")),
            family=family,
            family_config=json_option(family_config, "--family-config"),
            golden=_golden_checks(golden) if golden else (),
            deterministic=deterministic,
            trusted=trusted,
            description=description,
            metadata=json_option(metadata, "--metadata"),
            actor=actor,
        )
        emit(
            manifest.model_dump(mode="json"),
            as_json,
            lambda: f"registered {name} {version} ({fmt}, sha256 {manifest.sha256[:12]})",
        )


@registry_app.command("list")
def list_models(registry: RegistryOption = None, as_json: bool = JsonOption) -> None:
    """Every model with its versions and stages."""
    with errors_as_one_line():
        reg = open_registry(registry, must_exist=True)
        rows = []
        for name in reg.list_models():
            try:
                index = reg.index(name)
            # One model's damage hides no other (InvalidNameError: a symlink out of the root).
            except UNREADABLE as exc:
                rows.append({"name": name, "version": None, "status": f"unreadable: {exc}"})
                continue
            for version in index.versions:
                rows.append({"name": name, "version": version, "status": index.status(version)})
        emit(rows, as_json, lambda: table(rows, ("name", "version", "status")))
        if any(row["version"] is None for row in rows):
            raise typer.Exit(1)


@registry_app.command()
def show(
    name: str,
    version: Annotated[str | None, typer.Argument()] = None,
    registry: RegistryOption = None,
    as_json: bool = JsonOption,
) -> None:
    """A version's manifest (the production version's when VERSION is left out)."""
    with errors_as_one_line():
        reg = open_registry(registry, must_exist=True)
        manifest = reg.resolve(name, version=version)
        index = reg.index(name)
        data = manifest.model_dump(mode="json")
        # The index's revision too: what --if-revision compares with.
        data.update(status=index.status(manifest.version), revision=index.revision)
        emit(data, as_json, lambda: json.dumps(data, indent=2))


SkipChecksOption = Annotated[
    bool,
    typer.Option(help="Move the alias without loading the version and running its checks."),
]


@registry_app.command()
def promote(
    name: str,
    version: str,
    stage: Annotated[str, typer.Argument(help="staging | production")],
    reason: ReasonOption = "",
    actor: ActorOption = None,
    if_revision: Annotated[
        int | None, typer.Option(help="Only if the model's index is still at this revision.")
    ] = None,
    skip_checks: SkipChecksOption = False,
    registry: RegistryOption = None,
    as_json: bool = JsonOption,
) -> None:
    """Point STAGE at VERSION (production archives the version it leaves), once VERSION is
    verified, loaded and run through its golden checks."""
    with errors_as_one_line():
        reg = open_registry(registry)
        if not skip_checks:
            reg.check(name, version)
        leaving = reg.index(name).aliases.get(_stage(stage))
        index = reg.promote(
            name, version, _stage(stage), actor=actor, reason=reason, expected_revision=if_revision
        )
        emit(index.model_dump(mode="json"), as_json, lambda: f"{name}: {stage} -> {version}")
        if leaving not in (None, version):
            _warn_if_servers_stay(reg, name, leaving, version)


def _warn_if_servers_stay(reg: ModelRegistry, name: str, leaving: str, version: str) -> None:
    """After a promotion: running servers switch live only between versions of one signature.
    The move is written, so a manifest that cannot be read here is a warning, not a failure
    (an emergency promotion away from a broken version would have exited 1)."""
    try:
        same = reg.same_signature(name, leaving, version)
    except RegistryError as exc:
        warn(
            f"cannot compare {version}'s inputs and outputs with {leaving}'s ({exc}): if they "
            f"differ, running servers keep serving {leaving}"
        )
        return
    if not same:
        warn(
            f"{version}'s inputs or outputs differ from {leaving}'s: running servers keep "
            f"serving {leaving}; roll out a new deployment to serve {version}"
        )


@registry_app.command()
def rollback(
    name: str,
    stage: Annotated[str, typer.Argument(help="staging | production")] = "production",
    reason: ReasonOption = "",
    actor: ActorOption = None,
    skip_checks: SkipChecksOption = False,
    registry: RegistryOption = None,
    as_json: bool = JsonOption,
) -> None:
    """Move STAGE back to the version it pointed at before.

    That version is first verified, loaded and run through its golden checks, as a promotion's
    is: the emergency path must not move a stage onto a version no server would load.
    """
    with errors_as_one_line():
        reg = open_registry(registry)
        read = reg.index(name)
        previous = rollback_target(read, _stage(stage))
        if previous is not None and not skip_checks:
            reg.check(name, previous)
        # Onto the version checked only, the stage as it was read; a registration meanwhile
        # (while a big artefact is checked, say) must not fail an emergency rollback.
        index = reg.rollback(name, _stage(stage), actor=actor, reason=reason, expected=read)
        target = index.aliases[_stage(stage)]
        emit(index.model_dump(mode="json"), as_json, lambda: f"{name}: {stage} -> {target}")


@registry_app.command()
def archive(
    name: str,
    version: str,
    reason: ReasonOption = "",
    actor: ActorOption = None,
    registry: RegistryOption = None,
    as_json: bool = JsonOption,
) -> None:
    """Mark VERSION archived (refused while it is in production)."""
    with errors_as_one_line():
        index = open_registry(registry).archive(name, version, actor=actor, reason=reason)
        emit(index.model_dump(mode="json"), as_json, lambda: f"{name} {version}: archived")


@registry_app.command()
def verify(
    name: Annotated[str | None, typer.Argument()] = None,
    version: Annotated[str | None, typer.Argument()] = None,
    registry: RegistryOption = None,
    as_json: bool = JsonOption,
) -> None:
    """Recompute artefact sha256s; exit 1 when any does not match."""
    with errors_as_one_line():
        reg = open_registry(registry, must_exist=True)
        # Empty is not "all": `verify m ""` checked every version, `verify "" 1.0.0` every model.
        names = reg.list_models() if name is None else [check_name_safe(name)]
        if version is not None:
            check_version_safe(version)
        results = [r for n in names for r in reg.verify(n, version)]
        rows = [r.model_dump() for r in results]
        emit(rows, as_json, lambda: table(rows, ("name", "version", "ok", "detail")))
        if not all(r.ok for r in results):
            raise typer.Exit(1)


@registry_app.command()
def history(name: str, registry: RegistryOption = None, as_json: bool = JsonOption) -> None:
    """Every registration and stage move of NAME, oldest first."""
    with errors_as_one_line():
        reg = open_registry(registry, must_exist=True)
        rows = [e.model_dump(mode="json") for e in reg.history(name)]
        columns = ("at", "action", "stage", "from_version", "version", "actor", "reason")
        emit(rows, as_json, lambda: table(rows, columns))


@registry_app.command("seed-demo")
def seed_demo(registry: RegistryOption = None, as_json: bool = JsonOption) -> None:
    """Register the bundled demo models and promote their 1.0.0 to production."""
    from models.demo import seed_demo as seed

    with errors_as_one_line():
        reg = open_registry(registry)
        added = seed(reg)
        rows = [{"name": m.name, "version": m.version} for m in added]
        emit(
            rows,
            as_json,
            lambda: f"registered {len(rows)} demo model version(s) in {reg.store.url}",
        )


def _stage(value: str) -> Stage:
    if value not in ("staging", "production"):
        fail(f"unknown stage {value!r}; stages are staging, production")
    return value  # type: ignore[return-value]
