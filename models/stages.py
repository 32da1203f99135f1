"""The stage model: a name's index (versions, aliases, archived, history) and how aliases move.

`staging` and `production` each point at one version or none. Promoting V to production
archives the version production leaves and clears staging if it pointed at V; archiving the
staging version clears staging too. Every move is appended to the history, and rollback is read
from it: each stage's moves form a stack (promote pushes, rollback pops), so rollback returns
to the version the stage held before the last move still in force.
"""

from __future__ import annotations

import getpass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import CorruptObjectError, validation_message
from models.manifest import STAGES, Stage, utcnow

Action = Literal["register", "promote", "rollback", "archive"]


class StageEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: datetime = Field(default_factory=utcnow)
    actor: str
    action: Action
    version: str
    stage: Stage | None = None
    from_version: str | None = None
    reason: str = ""


class ModelIndex(BaseModel):
    """The mutable state of one model name; replaced whole by compare-and-swap."""

    model_config = ConfigDict(extra="forbid")

    name: str
    revision: int = 0
    versions: list[str] = Field(default_factory=list)
    aliases: dict[Stage, str | None] = Field(default_factory=lambda: dict.fromkeys(STAGES))
    archived: list[str] = Field(default_factory=list)
    history: list[StageEvent] = Field(default_factory=list)

    def status(self, version: str) -> str:
        stages = [stage for stage, v in self.aliases.items() if v == version]
        if stages:
            return ",".join(stages)
        return "archived" if version in self.archived else "registered"


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary container UID
        return "unknown"


def move_alias(
    ix: ModelIndex, stage: Stage, version: str, action: Action, actor: str | None, reason: str
) -> None:
    """Point `stage` at `version` (a promotion or a rollback) and record it."""
    previous = ix.aliases.get(stage)
    ix.aliases[stage] = version
    if version in ix.archived:
        ix.archived.remove(version)  # an archived version may be promoted again
    if stage == "production":
        if ix.aliases.get("staging") == version:
            ix.aliases["staging"] = None
        if previous is not None and previous != version and previous not in ix.archived:
            ix.archived.append(previous)
    ix.history.append(
        StageEvent(
            actor=actor or default_actor(),
            action=action,
            version=version,
            stage=stage,
            from_version=previous,
            reason=reason,
        )
    )


def archive_version(ix: ModelIndex, version: str, actor: str | None, reason: str) -> None:
    """Archive `version` (not production's), clearing staging if it pointed there; record it."""
    if ix.aliases.get("staging") == version:
        ix.aliases["staging"] = None
    if version not in ix.archived:
        ix.archived.append(version)
    ix.history.append(
        StageEvent(actor=actor or default_actor(), action="archive", version=version, reason=reason)
    )


def stage_state(ix: ModelIndex, stage: Stage) -> tuple[str | None, list[StageEvent]]:
    """All that decides where `stage` is and where a rollback of it goes: its alias and its
    history (events of other stages, and registrations, leave it as it is)."""
    return ix.aliases.get(stage), [event for event in ix.history if event.stage == stage]


def rollback_target(ix: ModelIndex, stage: Stage) -> str | None:
    """The version `stage` pointed at before the last move still in force; None when none.

    The history is replayed with a stack per stage. When staging is cleared (production took
    its version, or it was archived), its stack ends there: going back past the clear would
    point staging at production's version or at an archived one, and going back to "none" is
    not a version. Rolling staging back then needs two promotions to staging after the clear.
    A version that production takes or leaves (it is archived then) or that the archive holds
    leaves the rest of staging's stack too, for the same reason.
    """
    stacks: dict[Stage, list[str]] = {s: [] for s in STAGES}
    for event in ix.history:
        staging = stacks["staging"]
        if event.action == "archive":
            _leave_staging(staging, event.version)
            continue
        if event.stage is None:
            continue
        stack = stacks[event.stage]
        if event.action == "promote":
            # A promotion to the current target moved nothing (histories written before such a
            # promotion became a no-op hold some): as a step, rollback would go nowhere.
            if not stack or stack[-1] != event.version:
                stack.append(event.version)
        elif event.action == "rollback" and stack:
            stack.pop()
        if event.stage == "production":
            _leave_staging(staging, event.version)
            if event.from_version is not None:  # archived as production left it
                _leave_staging(staging, event.from_version)
    stack = stacks[stage]
    target = stack[-2] if len(stack) >= 2 else None
    # What the replay cannot see: a version promoted to staging while production already held
    # it (production never "took" it). Staging never goes back to production's version or to
    # an archived one, whatever the history says.
    if stage == "staging" and (target == ix.aliases.get("production") or target in ix.archived):
        return None
    return target


def _leave_staging(staging: list[str], version: str) -> None:
    """`version` went to production or the archive: staging no longer goes back to it."""
    if staging and staging[-1] == version:
        staging.clear()  # staging itself was cleared: its stack ends here
    else:
        kept = [v for v in staging if v != version]
        # Taking a version out of the middle can leave its neighbours equal ([a, b, a] -> [a, a]):
        # kept twice, rollback would "go back" to the version staging already holds.
        staging[:] = [v for i, v in enumerate(kept) if i == 0 or kept[i - 1] != v]


def parse_index(raw: bytes, key: str, name: str) -> ModelIndex:
    """A stored index, refused unless it parses and names the model it is stored under."""
    try:
        index = ModelIndex.model_validate_json(raw)
    except ValidationError as exc:
        raise CorruptObjectError(f"{key} is unreadable: {validation_message(exc)}") from None
    if index.name != name:
        raise CorruptObjectError(
            f"{key} names model {index.name!r}, not the model it is stored as; refused"
        )
    return index
