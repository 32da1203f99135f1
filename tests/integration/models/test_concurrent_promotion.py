"""Stage moves from several processes at once: compare-and-swap leaves one consistent history."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.registry import ModelRegistry
from tests.support.artefacts import TINY_CONFIG, TINY_SIGNATURE, write_tiny_mlp

PROMOTER = """
import sys, time
from models.errors import ConflictError
from models.registry import ModelRegistry
root, version, revision, start, rounds = sys.argv[1:6]
registry = ModelRegistry(root)
while time.time() < float(start):
    pass
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


def race(registry: ModelRegistry, versions: list[str], revision: str, rounds: int) -> list[int]:
    start = str(time.time() + 1.5)  # all processes start their promotions at the same moment
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROMOTER, registry.store.url, v, revision, start, str(rounds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for v in versions
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return [int(out) for out in outputs]


def test_two_processes_promoting_from_the_same_revision_leave_exactly_one_winner(
    registry: ModelRegistry,
) -> None:
    revision = registry.index("tiny").revision
    wins = race(registry, ["1.0.0", "2.0.0"], str(revision), rounds=1)
    assert sorted(wins) == [0, 1]
    index = registry.index("tiny")
    winner = "1.0.0" if wins[0] else "2.0.0"
    assert index.aliases["production"] == winner
    assert index.revision == revision + 1
    assert [e.version for e in index.history if e.action == "promote"] == [winner]


def test_many_racing_promotions_keep_revision_and_history_consistent(
    registry: ModelRegistry,
) -> None:
    before = registry.index("tiny")
    wins = race(registry, ["1.0.0", "2.0.0", "3.0.0"], "-", rounds=15)
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
