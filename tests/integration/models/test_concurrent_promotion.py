"""Stage moves from several processes at once: compare-and-swap leaves one consistent history."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from models.store import LocalStore
from tests.support import children
from tests.support.artefacts import TINY_CONFIG, TINY_SIGNATURE, write_tiny_mlp

PROMOTER = """
import os, sys, time
from models.errors import ConflictError
from models.registry import ModelRegistry
from models.store import LocalStore
root, version, revision, go, rounds = sys.argv[1:6]
registry = ModelRegistry(root)
print("ready", flush=True)  # imports (torch) take seconds: the race starts after everyone's
waited = time.monotonic() + 120  # never spin on after the test has gone
while not os.path.exists(go) and time.monotonic() < waited:
    time.sleep(0.0005)
wins, last = 0, -1
for _ in range(int(rounds)):
    expected = int(revision) if revision != "-" else None
    try:
        index = registry.promote(
            "tiny", version, "production", actor=version, expected_revision=expected
        )
    except ConflictError:
        continue
    # Promoting the version already in production writes nothing: the revision stays ours.
    wins += index.revision > last
    last = index.revision
print(wins)
"""


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    registry = ModelRegistry(tmp_path / "registry")
    for i, version in enumerate(("1.0.0", "2.0.0", "3.0.0")):
        registry.register(
            "tiny",
            version,
            write_tiny_mlp(tmp_path / f"{i}.safetensors", seed=i),
            format="safetensors",
            family="mlp",
            family_config=TINY_CONFIG,
            signature=TINY_SIGNATURE,
        )
    return registry


def race(
    registry: ModelRegistry, versions: list[str], revision: str, rounds: int, go: Path
) -> list[int]:
    """Start one promoter per version, wait until all are ready, then release them at once."""
    with children() as procs:
        for v in versions:
            argv = [sys.executable, "-c", PROMOTER, registry.store.url, v, revision, str(go)]
            procs.append(subprocess.Popen([*argv, str(rounds)], stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        go.touch()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs)
    return [int(out) for out in outputs]


def test_two_processes_promoting_from_the_same_revision_leave_exactly_one_winner(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    revision = registry.index("tiny").revision
    wins = race(registry, ["1.0.0", "2.0.0"], str(revision), rounds=1, go=tmp_path / "go")
    assert sorted(wins) == [0, 1]
    index = registry.index("tiny")
    winner = "1.0.0" if wins[0] else "2.0.0"
    assert index.aliases["production"] == winner
    assert index.revision == revision + 1
    assert [e.version for e in index.history if e.action == "promote"] == [winner]


def test_many_racing_promotions_keep_revision_and_history_consistent(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    before = registry.index("tiny")
    wins = race(registry, ["1.0.0", "2.0.0", "3.0.0"], "-", rounds=15, go=tmp_path / "go")
    index = registry.index("tiny")
    promotions = [e for e in index.history if e.action == "promote"]
    assert len(promotions) == sum(wins) > 0
    assert index.revision == before.revision + sum(wins)
    # Each recorded move starts where the previous one ended: no lost update.
    for earlier, later in itertools.pairwise(promotions):
        assert later.from_version == earlier.version
    assert index.aliases["production"] == promotions[-1].version
    assert len(set(index.archived)) == len(index.archived)
    assert index.aliases["production"] not in index.archived


LOCK_HOLDER = """
import sys
import threading
from filelock import FileLock
with FileLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_swap_waits_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    """The lock itself, deterministically: the races above may interleave harmlessly."""
    store = LocalStore(tmp_path)
    store.put_bytes("tiny/index.json", b"old")
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "tiny" / "index.json.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            swapped: list[bool] = []
            swapper = threading.Thread(
                target=lambda: swapped.append(store.swap("tiny/index.json", b"new", b"old"))
            )
            swapper.start()
            swapper.join(0.5)
            assert swapper.is_alive()  # blocked on the lock: nothing read or written yet
            assert store.read("tiny/index.json") == b"old"
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            swapper.join(30)
            assert swapped == [True]
            assert store.read("tiny/index.json") == b"new"
        finally:
            holder.kill()
