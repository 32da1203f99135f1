"""ModelRegistry: versions, stage aliases with an append-only history, verified artefacts.

Layout in the store:
    <name>/index.json                 ModelIndex: versions, aliases, archived, history, revision
    <name>/<version>/manifest.json    ModelManifest, written once
    <name>/<version>/<artefact>       the artefact's bytes

The stage model (aliases, history, rollback) is models/stages.py. Every change to an index is a
compare-and-swap, so of two concurrent stage moves that read the same index, exactly one wins
and the other gets ConflictError with nothing written. A registration only adds its version, so
it re-reads the index and tries again instead.

A version is registered once the index lists it. Its manifest and artefact are written first,
so a registration that stopped midway leaves files no reader serves; registering the same
bytes with the same manifest again finishes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from models.checks import check_deterministic, check_signature
from models.errors import (
    UNREADABLE,
    ArtefactError,
    ConflictError,
    CorruptObjectError,
    IntegrityError,
    ModelNotFoundError,
    StageError,
    VersionExistsError,
    validation_message,
)
from models.formats import LoadedModel, load_model
from models.golden import run_golden_checks
from models.index_store import read_index, update_index
from models.manifest import (
    STAGES,
    ArtefactFormat,
    GoldenCheck,
    ModelManifest,
    Signature,
    Stage,
    check_name_safe,
    check_version_safe,
    is_model_name,
    version_key,
)
from models.stages import (
    ModelIndex,
    StageEvent,
    archive_version,
    default_actor,
    move_alias,
    rollback_target,
    stage_state,
)
from models.store import Store, holds, open_store, sha256_bytes, sha256_file

# Index writes that may be applied again to an index changed meanwhile (a registration only adds
# its version; a rollback whose target stays the one checked) retry a lost swap this many times.
INDEX_ATTEMPTS = 5


class VerifyResult(BaseModel):
    name: str
    version: str | None  # None: the model's index itself could not be read
    ok: bool
    detail: str


class ModelRegistry:
    def __init__(self, store: Store | str | Path) -> None:
        self.store: Store = store if not isinstance(store, str | Path) else open_store(str(store))

    # ------------------------------------------------------------------ reading
    def list_models(self) -> list[str]:
        """Every model with an index, even one that cannot be read or parse (`index` says why):
        one model's damage must neither hide it nor keep the others from being listed."""
        return list(self._models())

    def is_empty(self) -> bool:
        """Whether no model is registered. Reads indexes only until it finds one."""
        return next(self._models(), None) is None

    def _models(self) -> Iterator[str]:
        names = (n for n in self.store.list("") if is_model_name(n))  # not a stray file, say
        return (name for name in names if holds(self.store, f"{name}/index.json"))

    def index(self, name: str) -> ModelIndex:
        return read_index(self.store, name)

    def manifest(self, name: str, version: str) -> ModelManifest:
        """The stored manifest, even of a version whose registration has not finished (which
        copying between registries needs); `resolve` serves only registered versions.

        Refused (CorruptObjectError) unless it names the name and version it is stored under:
        the artefact's key is built from the manifest, so an edited manifest could otherwise
        point at another model's artefact, whose sha256 it would then also carry.
        """
        check_version_safe(version)
        key = f"{check_name_safe(name)}/{version}/manifest.json"
        raw = self.store.read(key)
        if raw is None:
            raise ModelNotFoundError(name, version=version)
        try:
            manifest = ModelManifest.model_validate_json(raw)
        except ValidationError as exc:
            raise CorruptObjectError(f"{key} is unreadable: {validation_message(exc)}") from None
        if (manifest.name, manifest.version) != (name, version):
            raise CorruptObjectError(
                f"{key} names {manifest.name} {manifest.version}, not the version it is stored "
                "as; refused (edited or copied by hand?)"
            )
        return manifest

    def resolve(
        self, name: str, stage: Stage = "production", version: str | None = None
    ) -> ModelManifest:
        """The manifest of a pinned version, or of the version a stage alias points at."""
        if version is not None:
            check_version_safe(version)
        index = self.index(name)
        target = version if version is not None else index.aliases.get(stage)
        if target is None:
            raise ModelNotFoundError(name, stage=stage)
        return self._registered_manifest(index, target)

    def history(self, name: str) -> list[StageEvent]:
        return list(self.index(name).history)

    # ------------------------------------------------------------------ artefacts
    def artefact_bytes(self, manifest: ModelManifest) -> bytes:
        """The artefact's bytes, refused unless their sha256 is the registered one."""
        key = f"{manifest.name}/{manifest.version}/{manifest.artefact}"
        try:
            data = self.store.local_path(key, size=manifest.size_bytes).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(key, manifest.sha256, None) from None
        actual = sha256_bytes(data)
        if actual != manifest.sha256:
            raise IntegrityError(key, manifest.sha256, actual)
        return data

    def load(self, manifest: ModelManifest, device: torch.device | str = "cpu") -> LoadedModel:
        return load_model(manifest, self.artefact_bytes(manifest), torch.device(device))

    def check(self, name: str, version: str) -> ModelManifest:
        """Verify, load (CPU), run two batch sizes and the golden checks; raise on failure."""
        manifest = self.resolve(name, version=version)
        model = self.load(manifest)
        try:
            check_signature(model)
            run_golden_checks(model)
        finally:
            model.release()
        return manifest

    def verify_artefact(self, manifest: ModelManifest) -> None:
        """Raise IntegrityError unless the artefact's sha256 is the registered one.

        Reads the file in chunks (a restore runs in a small init container); a remote store's
        download is dropped once hashed (checking a backup kept a second copy of it)."""
        key = f"{manifest.name}/{manifest.version}/{manifest.artefact}"
        try:
            actual = sha256_file(self.store.local_path(key, size=manifest.size_bytes))
        except FileNotFoundError:
            raise IntegrityError(key, manifest.sha256, None) from None
        finally:
            self.store.forget_local_copy(key)
        if actual != manifest.sha256:
            raise IntegrityError(key, manifest.sha256, actual)

    def verify(self, name: str, version: str | None = None) -> list[VerifyResult]:
        """One result per version. A version whose manifest or artefact is missing, unreadable
        or tampered with is a failed result naming it, and the others are still checked; an
        unreadable index is one failed result (version None)."""
        try:
            index = self.index(name)
        except UNREADABLE as exc:
            return [VerifyResult(name=name, version=None, ok=False, detail=str(exc))]
        versions = [version] if version else index.versions
        results = []
        for v in versions:
            try:
                self.verify_artefact(self._registered_manifest(index, v))
                results.append(VerifyResult(name=name, version=v, ok=True, detail="sha256 ok"))
            except (IntegrityError, *UNREADABLE) as exc:
                results.append(VerifyResult(name=name, version=v, ok=False, detail=str(exc)))
            except ModelNotFoundError as exc:
                if version is not None:
                    raise  # the version asked for is not registered: not a damaged registry
                results.append(VerifyResult(name=name, version=v, ok=False, detail=str(exc)))
        return results

    # ------------------------------------------------------------------ writing
    def register(
        self,
        name: str,
        version: str,
        artefact: Path,
        *,
        format: ArtefactFormat,
        signature: Signature,
        family: str | None = None,
        family_config: dict[str, Any] | None = None,
        golden: tuple[GoldenCheck, ...] = (),
        deterministic: bool = False,
        trusted: bool = False,
        description: str = "",
        metadata: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> ModelManifest:
        """Check the artefact loads, fits its signature and passes its golden checks; store it."""
        check_name_safe(name)
        check_version_safe(version)
        if not artefact.is_file():
            raise ArtefactError(f"artefact {artefact} is not a file")
        if version in self._index_or_new(name).versions:
            raise VersionExistsError(name, version)
        # Read once: the bytes hashed are the bytes checked and the bytes stored, even if the
        # file changes meanwhile.
        data = artefact.read_bytes()
        created_by = actor or default_actor()
        suffix = {"safetensors": ".safetensors", "torch_export": ".pt2", "torchscript": ".pt"}
        try:
            manifest = ModelManifest(
                name=name,
                version=version,
                format=format,
                artefact="model" + suffix[format],
                sha256=sha256_bytes(data),
                size_bytes=len(data),
                family=family,
                family_config=family_config or {},
                signature=signature,
                golden=golden,
                deterministic=deterministic,
                trusted=trusted,
                created_by=created_by,
                description=description,
                metadata=metadata or {},
            )
        except ValidationError as exc:
            raise ArtefactError(validation_message(exc)) from None
        if (problem := manifest.registration_problem()) is not None:
            raise ArtefactError(problem)
        model = load_model(manifest, data, torch.device("cpu"))
        check_signature(model)
        if deterministic:
            check_deterministic(model)
        run_golden_checks(model)

        # Claim the version with a create-only write of its manifest, so two registrations of
        # one version cannot overwrite each other's files; the index is written last.
        base = f"{name}/{version}"
        if not self.store.swap(
            f"{base}/manifest.json", manifest.model_dump_json(indent=2).encode(), None
        ):
            manifest = self._unfinished_registration(manifest)
        self.store.put_bytes(f"{base}/{manifest.artefact}", data)

        def add(ix: ModelIndex) -> None:
            if version in ix.versions:
                raise VersionExistsError(name, version)
            ix.versions.append(version)
            ix.versions.sort(key=version_key)
            ix.history.append(StageEvent(actor=created_by, action="register", version=version))

        try:
            self._update(name, add, create=True, attempts=INDEX_ATTEMPTS)
        except ConflictError:
            raise ConflictError(
                f"{name}'s index kept changing; {version} is stored but not registered: "
                "register it again to finish"
            ) from None
        return manifest

    def promote(
        self,
        name: str,
        version: str,
        stage: Stage,
        *,
        actor: str | None = None,
        reason: str = "",
        expected_revision: int | None = None,
    ) -> ModelIndex:
        check_version_safe(version)
        if stage not in STAGES:
            raise StageError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")

        def move(ix: ModelIndex) -> None:
            if version not in ix.versions:
                raise ModelNotFoundError(name, version=version)
            if ix.aliases.get(stage) == version:
                return  # already there: recording it would give rollback a step that goes nowhere
            move_alias(ix, stage, version, "promote", actor, reason)

        return self._update(name, move, expected_revision=expected_revision)

    def same_signature(self, name: str, version: str, other: str) -> bool:
        """Whether two versions take and give the same tensors: a server switches from one to
        the other live only then (their clients' requests would break)."""
        return self.manifest(name, version).signature == self.manifest(name, other).signature

    def rollback(
        self,
        name: str,
        stage: Stage = "production",
        *,
        actor: str | None = None,
        reason: str = "",
        expected_revision: int | None = None,
        expected: ModelIndex | None = None,
    ) -> ModelIndex:
        """Move `stage` back a step. With `expected` (the index the caller read, and whose
        target it checked): only while the stage is as it was then and its target the same, so a
        change meanwhile that leaves both alone (a registration, another stage's move) is
        retried, not refused, and one that moved the stage (even there and back again) or its
        target (production taking the version, an archive) is refused."""

        def back(ix: ModelIndex) -> None:
            previous = rollback_target(ix, stage)
            if previous is None:
                raise StageError(f"{name} has no earlier {stage} version to roll back to")
            if expected is not None:
                checked = rollback_target(expected, stage)
                # The target depends on other stages' moves too: production taking a version,
                # or an archive, takes it out of staging's way back.
                moved = stage_state(ix, stage) != stage_state(expected, stage)
                if moved or previous != checked:
                    what = (
                        f"'s {stage} was moved" if moved else f" {checked} left {stage}'s history"
                    )
                    raise ConflictError(
                        f"{name}{what} meanwhile: rolling back now goes to {previous}, not "
                        f"{checked}; nothing was written"
                    )
            move_alias(ix, stage, previous, "rollback", actor, reason)

        attempts = 1 if expected is None else INDEX_ATTEMPTS
        return self._update(name, back, expected_revision=expected_revision, attempts=attempts)

    def archive(
        self, name: str, version: str, *, actor: str | None = None, reason: str = ""
    ) -> ModelIndex:
        check_version_safe(version)

        def retire(ix: ModelIndex) -> None:
            if version not in ix.versions:
                raise ModelNotFoundError(name, version=version)
            if ix.aliases.get("production") == version:
                raise StageError(
                    f"{name} {version} is in production: promote or roll back another version first"
                )
            archive_version(ix, version, actor, reason)

        return self._update(name, retire)

    # ------------------------------------------------------------------ internals
    def _registered_manifest(self, index: ModelIndex, version: str) -> ModelManifest:
        # The manifest is written before the index lists its version: until then (for ever, if
        # that registration stopped midway) the version is not registered.
        if version not in index.versions:
            raise ModelNotFoundError(index.name, version=version)
        return self.manifest(index.name, version)

    def _unfinished_registration(self, manifest: ModelManifest) -> ModelManifest:
        """The stored manifest of a version whose registration of this same manifest (all but
        who registered it, and when) never reached the index; VersionExistsError otherwise."""
        name, version = manifest.name, manifest.version
        stored = self.manifest(name, version)
        if version in self._index_or_new(name).versions:
            raise VersionExistsError(name, version)
        # Manifests are written once and the stored one is finished: any other field asked for
        # (a family_config, golden checks, a description) would be silently dropped.
        if differing := manifest.fields_differing_from(stored, ignore={"created", "created_by"}):
            unfinished = (  # unfinished, or still running: the index cannot tell yet
                f"not registered yet: a registration started {stored.created:%Y-%m-%d %H:%M:%S} "
                f"UTC stored another {', '.join(differing)}; unless it is still running, delete "
                f"{self.store.url}/{name}/{version}/ to start over, or register it as before"
            )
            raise VersionExistsError(name, version, unfinished)
        return stored

    def _index_or_new(self, name: str) -> ModelIndex:
        try:
            return self.index(name)
        except ModelNotFoundError:
            return ModelIndex(name=name)

    def _update(self, name: str, change: Callable[[ModelIndex], None], **kw: Any) -> ModelIndex:
        """`update_index` on this registry's store: every index write goes through here."""
        return update_index(self.store, name, change, **kw)
