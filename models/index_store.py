"""A model's index (`<name>/index.json`) in the store: read, and changed by compare-and-swap.

Every change goes through `update_index`, so of two writers that read the same index exactly one
writes; the other re-reads (when its change may be applied again to what it finds) or gets
ConflictError with nothing written.
"""

from __future__ import annotations

from collections.abc import Callable

from models.errors import ConflictError, ModelNotFoundError
from models.manifest import check_name_safe
from models.stages import ModelIndex, parse_index
from models.store import Store


def read_index(store: Store, name: str) -> ModelIndex:
    key = f"{check_name_safe(name)}/index.json"
    raw = store.read(key)
    if raw is None:
        raise ModelNotFoundError(name)
    return parse_index(raw, key, name)


def update_index(
    store: Store,
    name: str,
    change: Callable[[ModelIndex], None],
    *,
    create: bool = False,
    expected_revision: int | None = None,
    attempts: int = 1,
) -> ModelIndex:
    """Apply `change` to the index by compare-and-swap, re-reading after a lost swap up to
    `attempts` times in all. A change that changes nothing writes nothing."""
    key = f"{check_name_safe(name)}/index.json"
    for _ in range(attempts):
        raw = store.read(key)
        if raw is None and not create:
            raise ModelNotFoundError(name)
        # An empty index is a damaged one, as any other that does not parse: never a new one.
        index = parse_index(raw, key, name) if raw is not None else ModelIndex(name=name)
        if expected_revision is not None and index.revision != expected_revision:
            raise ConflictError(
                f"{name} is at revision {index.revision}, not {expected_revision}; "
                "re-read and retry"
            )
        before = index.model_dump_json()
        change(index)
        if raw is not None and index.model_dump_json() == before:
            return index  # e.g. a promotion to the current target: no event, same revision
        index.revision += 1
        if store.swap(key, index.model_dump_json(indent=2).encode(), raw):
            return index
    raise ConflictError(f"{name} was changed by someone else meanwhile; nothing was written")
