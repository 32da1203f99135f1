"""Copy model versions between registries (local <-> S3): push, pull, and whole-registry mirrors.

A version is copied as its manifest (byte for byte) and its artefact, whose sha256 is checked
against the manifest before it leaves the source and again after it lands in the target.
Versions are immutable: a target that holds the same version with a different sha256 is an
error, never overwritten. The same version already in the target is skipped (a broken copy of
it is repaired), so a copy can be repeated and resumed.

The target's model index is merged with compare-and-swap: copied versions are added, with a
`register` event naming where they came from. Stage aliases move only when asked
(`stages=True`): each target alias is then set to the source's (when that version is in the
target), recorded as a `promote` event, and `archived` follows the source for the versions both
hold. An alias the source leaves unset is left as it is in the target.

A whole model copied with its stages into a registry whose history of it is the start of the
source's (none yet: a restore into an empty registry, a first backup; or every earlier backup
made this way) takes the source's index as it is instead, history included: rollback replays
the history, so synthesised events would roll back elsewhere than the source, or nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.errors import ConflictError, IntegrityError, ModelNotFoundError, RegistryError
from models.manifest import STAGES, ModelManifest, version_key
from models.registry import INDEX_ATTEMPTS, ModelRegistry
from models.stages import ModelIndex, StageEvent, default_actor, move_alias, parse_index
from models.store import sha256_file

CopyAction = Literal["copied", "present", "repaired"]


class DivergedError(RegistryError):
    """Source and target hold different artefacts under one version."""


@dataclass(frozen=True)
class CopiedVersion:
    name: str
    version: str
    action: CopyAction


@dataclass
class SyncReport:
    name: str
    source: str
    target: str
    versions: list[CopiedVersion] = field(default_factory=list)
    stage_moves: list[StageEvent] = field(default_factory=list)
    error: str | None = None  # copy_all: why this model was not copied (the others were)


def push(
    local: ModelRegistry,
    remote: ModelRegistry,
    name: str,
    version: str | None = None,
    *,
    stages: bool = False,
    actor: str | None = None,
) -> SyncReport:
    """Copy NAME (every version, or one) from the local registry to the remote one."""
    return copy_model(local, remote, name, version, stages=stages, actor=actor)


def pull(
    remote: ModelRegistry,
    local: ModelRegistry,
    name: str,
    version: str | None = None,
    *,
    stages: bool = False,
    actor: str | None = None,
) -> SyncReport:
    """Copy NAME (every version, or one) from the remote registry to the local one."""
    return copy_model(remote, local, name, version, stages=stages, actor=actor)


def copy_all(
    source: ModelRegistry,
    target: ModelRegistry,
    *,
    stages: bool = False,
    actor: str | None = None,
) -> list[SyncReport]:
    """Copy every model of the source (a backup, or a restore).

    A model that cannot be copied (its index unreadable, a version diverged) is reported with
    its `error`, and the others are still copied: one damaged model must not leave every
    model after it out of a backup, nor every pod of an `s3Pull` registry without its model.
    """
    reports = []
    for name in source.list_models():
        try:
            reports.append(copy_model(source, target, name, stages=stages, actor=actor))
        except (RegistryError, OSError) as exc:
            report = SyncReport(name=name, source=source.store.url, target=target.store.url)
            report.error = str(exc) or type(exc).__name__
            reports.append(report)
    return reports


def copy_model(
    source: ModelRegistry,
    target: ModelRegistry,
    name: str,
    version: str | None = None,
    *,
    stages: bool = False,
    actor: str | None = None,
) -> SyncReport:
    source_index = source.index(name)
    if version is not None and version not in source_index.versions:
        raise ModelNotFoundError(name, version=version)
    versions = [version] if version is not None else list(source_index.versions)
    report = SyncReport(name=name, source=source.store.url, target=target.store.url)
    for v in versions:
        action = _copy_version(source, target, source.manifest(name, v))
        report.versions.append(CopiedVersion(name, v, action))
    report.stage_moves = _merge_index(
        source_index,
        target,
        versions,
        stages=stages,
        actor=actor or default_actor(),
        reason=f"copied from {source.store.url}",
    )
    return report


def _copy_version(
    source: ModelRegistry, target: ModelRegistry, manifest: ModelManifest
) -> CopyAction:
    name, version = manifest.name, manifest.version
    manifest_key = f"{name}/{version}/manifest.json"
    artefact_key = f"{name}/{version}/{manifest.artefact}"
    existing = _manifest_or_none(target, name, version)
    if existing is not None:
        _check_same(existing, manifest, target)
        try:
            target.verify_artefact(existing)
            return "present"
        except IntegrityError:
            pass  # an interrupted or damaged copy: send the artefact again

    try:
        path = source.store.local_path(artefact_key, size=manifest.size_bytes)
    except FileNotFoundError:
        raise IntegrityError(f"{source.store.url}/{artefact_key}", manifest.sha256, None) from None
    actual = sha256_file(path)
    if actual != manifest.sha256:
        raise IntegrityError(f"{source.store.url}/{artefact_key}", manifest.sha256, actual)

    raw = source.store.read(manifest_key)
    if raw is None:
        raise ModelNotFoundError(name, version=version)
    # As in register: claim the version with a create-only manifest write, artefact next,
    # index last, so the version is resolvable only once its bytes are in place.
    if existing is None and not target.store.swap(manifest_key, raw, None):
        existing = target.manifest(name, version)  # created meanwhile by another copy
        _check_same(existing, manifest, target)
    target.store.put_file(artefact_key, path)
    target.verify_artefact(target.manifest(name, version))  # its download is not kept
    # A remote source downloaded the artefact into its cache just for this copy: drop it, or a
    # pull leaves a second full copy of every artefact on the disk.
    source.store.forget_local_copy(artefact_key)
    return "copied" if existing is None else "repaired"


def _manifest_or_none(registry: ModelRegistry, name: str, version: str) -> ModelManifest | None:
    try:
        return registry.manifest(name, version)
    except ModelNotFoundError:
        return None


def _check_same(existing: ModelManifest, wanted: ModelManifest, target: ModelRegistry) -> None:
    """The target's version is this one: the same bytes, and the same manifest but for who
    registered it and when (the same weights under another signature, say, answer otherwise)."""
    immutable = "versions are immutable, register the change as a new version"
    where = f"{wanted.name} {wanted.version} in {target.store.url}"
    if existing.sha256 != wanted.sha256:
        raise DivergedError(
            f"{where} has sha256 {existing.sha256[:12]}..., not {wanted.sha256[:12]}...; "
            f"{immutable}"
        )
    if differing := wanted.fields_differing_from(existing, ignore={"created", "created_by"}):
        raise DivergedError(f"{where} has another {', '.join(differing)}; {immutable}")


def _merge_index(
    source_index: ModelIndex,
    target: ModelRegistry,
    versions: list[str],
    *,
    stages: bool,
    actor: str,
    reason: str,
) -> list[StageEvent]:
    key = f"{source_index.name}/index.json"
    whole = stages and set(versions) == set(source_index.versions)
    for _ in range(INDEX_ATTEMPTS):
        raw = target.store.read(key)
        name = source_index.name
        # An empty index is a damaged one (refused, as any that does not parse), not a new one.
        index = parse_index(raw, key, name) if raw is not None else ModelIndex(name=name)
        before = index.model_dump_json()
        if whole and index.history == source_index.history[: len(index.history)]:
            moves = _mirror(index, source_index, actor, reason)
        else:
            _add_versions(index, versions, actor, reason)
            moves = _follow_stages(index, source_index, actor, reason) if stages else []
        if index.model_dump_json() == before:
            return []  # already in step: nothing to write, the revision stays
        index.revision += 1
        if target.store.swap(key, index.model_dump_json(indent=2).encode(), raw):
            return moves
    raise ConflictError(
        f"{source_index.name}'s index in {target.store.url} kept changing; nothing was merged"
    )


def _mirror(index: ModelIndex, source: ModelIndex, actor: str, reason: str) -> list[StageEvent]:
    """Make `index`, whose history is the start of the source's, the source's index: its later
    events as they happened, so a restore rolls back as the source would."""
    moves = [  # reported, not recorded: the history has the source's own events
        StageEvent(actor=actor, action="promote", version=v, stage=stage, reason=reason)
        for stage, v in source.aliases.items()
        if v is not None and v != index.aliases.get(stage)
    ]
    index.versions = list(source.versions)
    index.aliases = dict(source.aliases)
    index.archived = list(source.archived)
    index.history = list(source.history)
    return moves


def _add_versions(index: ModelIndex, versions: list[str], actor: str, reason: str) -> None:
    for v in versions:
        if v not in index.versions:
            index.versions.append(v)
            index.history.append(
                StageEvent(actor=actor, action="register", version=v, reason=reason)
            )
    index.versions.sort(key=version_key)


def _follow_stages(
    index: ModelIndex, source: ModelIndex, actor: str, reason: str
) -> list[StageEvent]:
    """Move the target's aliases to the source's, each move a promotion recorded as any other
    (production archives the version it leaves), and archive what the source archived."""
    first = len(index.history)
    for stage in STAGES:
        wanted = source.aliases.get(stage)
        if wanted is None or wanted == index.aliases.get(stage) or wanted not in index.versions:
            continue
        move_alias(index, stage, wanted, "promote", actor, reason)
    moves = index.history[first:]
    if index.aliases.get("staging") is not None and index.aliases.get(
        "staging"
    ) == index.aliases.get("production"):
        index.aliases["staging"] = None
    # The source's archive, for the versions both hold. Nothing leaves the target's archive but
    # by a promotion (recorded above): a version archived here was retired for a reason, and
    # un-archiving it silently left the history saying otherwise.
    held = {v for v in index.aliases.values() if v is not None}
    retired = {v for v in source.archived if v in index.versions} - held - set(index.archived)
    for v in sorted(retired, key=version_key):
        index.history.append(StageEvent(actor=actor, action="archive", version=v, reason=reason))
        index.archived.append(v)
    return moves
