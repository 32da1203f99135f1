"""`frameworm registry push` / `pull`: copies between registries (a backup, a restore, a
promotion from one environment's registry to another's), sha256-verified."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from app.cli.output import JsonOption, emit, errors_as_one_line, fail
from app.cli.registry import ActorOption, RegistryOption, open_registry

if TYPE_CHECKING:
    from models.registry import ModelRegistry

StagesOption = Annotated[
    bool | None,
    typer.Option(
        "--stages/--no-stages",
        help="Also move stage aliases to the source's (default: on with --all, off otherwise).",
    ),
]
AllOption = Annotated[
    bool, typer.Option("--all", help="Every model: a whole-registry backup or restore.")
]
NameArgument = Annotated[str | None, typer.Argument(help="The model (leave out with --all).")]
VersionArgument = Annotated[
    str | None, typer.Argument(help="One version (default: every version).")
]


def push(
    to: Annotated[str, typer.Option("--to", help="Target registry: s3://bucket/prefix or a dir.")],
    name: NameArgument = None,
    version: VersionArgument = None,
    all_models: AllOption = False,
    stages: StagesOption = None,
    actor: ActorOption = None,
    registry: RegistryOption = None,
    as_json: bool = JsonOption,
) -> None:
    """Copy versions of NAME (or --all models) from --registry to --to, sha256-verified."""
    with errors_as_one_line():
        _copy(
            open_registry(registry, must_exist=True),
            open_registry(to, option="--to"),
            name,
            version,
            all_models,
            stages,
            actor,
            as_json,
        )


def pull(
    source: Annotated[
        str, typer.Option("--from", help="Source registry: s3://bucket/prefix or a dir.")
    ],
    name: NameArgument = None,
    version: VersionArgument = None,
    all_models: AllOption = False,
    stages: StagesOption = None,
    actor: ActorOption = None,
    registry: RegistryOption = None,
    as_json: bool = JsonOption,
) -> None:
    """Copy versions of NAME (or --all models) from --from into --registry, sha256-verified."""
    with errors_as_one_line():
        _copy(
            open_registry(source, must_exist=True, option="--from"),
            open_registry(registry),
            name,
            version,
            all_models,
            stages,
            actor,
            as_json,
        )


def _copy(
    source: ModelRegistry,
    target: ModelRegistry,
    name: str | None,
    version: str | None,
    all_models: bool,
    stages: bool | None,
    actor: str | None,
    as_json: bool,
) -> None:
    from models.sync import copy_all, copy_model

    if all_models == (name is not None):
        fail("name a model, or pass --all (not both)")
    if source.store.url == target.store.url:
        fail(f"source and target are the same registry ({source.store.url})")
    follow = all_models if stages is None else stages
    if name is None:
        reports = copy_all(source, target, stages=follow, actor=actor)
    else:
        reports = [copy_model(source, target, name, version, stages=follow, actor=actor)]
    payload = [
        {
            "name": r.name,
            "source": r.source,
            "target": r.target,
            "versions": [{"version": c.version, "action": c.action} for c in r.versions],
            "stage_moves": [e.model_dump(mode="json") for e in r.stage_moves],
            "error": r.error,
        }
        for r in reports
    ]

    def human() -> str:
        lines = [
            f"{r.name} {c.version}: {c.action} ({r.source} -> {r.target})"
            for r in reports
            for c in r.versions
        ]
        lines += [f"{r.name}: {e.stage} -> {e.version}" for r in reports for e in r.stage_moves]
        lines += [f"{r.name}: not copied: {r.error}" for r in reports if r.error]
        return "\n".join(lines) or "(no models)"

    emit(payload, as_json, human)
    if any(r.error for r in reports):
        raise typer.Exit(1)  # every other model was copied
