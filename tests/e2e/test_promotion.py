"""Promotions under continuous load, on a real server following the production alias.

Clients keep posting while the alias moves; what they see (status and the `version` field,
request by request) shows whether the switch was seamless, final, and whether a bad version
was ever served. Versions are real registered artefacts (`tests.support.models`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from models.registry import ModelRegistry
from tests.support.models import MODEL, promote, register_guarded, register_mlp, tamper
from tests.support.process import (
    Load,
    Outcome,
    launch,
    metric,
    readiness,
    readiness_until,
    stop,
)

A, B, C = "1.0.0", "2.0.0", "3.0.0"
FOLLOW_INTERVAL_S = 0.5
FOLLOWING = {"FRAMEWORM_FOLLOW_STAGE": "true", "FRAMEWORM_FOLLOW_INTERVAL_S": "0.5"}
# Inputs the healthy versions serve and the guarded version refuses at run time (|x| >= 10).
LARGE_INPUTS: dict[str, Any] = {"inputs": {"x": [[50.0, -20.0, 12.0, 0.5]]}}


def checked_promotion(registry: ModelRegistry, version: str) -> None:
    """What `frameworm registry promote` does, in-process (the first test runs the CLI itself)."""
    registry.check(MODEL, version)
    registry.promote(MODEL, version, "production", actor="tests")


def versions_by_client(outcomes: list[Outcome]) -> dict[int, list[str | None]]:
    """Each client's served versions, in the order it got them (one request at a time)."""
    by_client: dict[int, list[str | None]] = {}
    for outcome in sorted(outcomes, key=lambda o: o.sent):
        by_client.setdefault(outcome.client, []).append(outcome.version)
    return by_client


def only_moves_forward(sequence: list[str | None], order: list[str]) -> bool:
    """True when `sequence` visits the versions in `order` and never returns to an earlier one."""
    ranks = [order.index(v) for v in sequence if v is not None]
    return ranks == sorted(ranks)


def test_a_promotion_under_load_switches_once_fails_nothing_and_refuses_a_tampered_version(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_mlp(registry, A, tmp_path, seed=0)
    register_mlp(registry, B, tmp_path, seed=1)
    tampered = register_mlp(registry, C, tmp_path, seed=2)
    registry.promote(MODEL, A, "production", actor="tests")
    tamper(tmp_path / "registry", tampered)
    server = launch(tmp_path, tmp_path / "registry", FOLLOWING)

    async def scenario() -> tuple[Load, float, dict[str, Any], float]:
        load = Load(server.url, clients=4, pause_s=0.02)
        load.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            await load.until(20)
            promoted = await asyncio.to_thread(promote, tmp_path / "registry", B)
            assert promoted.returncode == 0, promoted.stderr
            switched = await load.until_seen(lambda o: o.version == B)
            # C's bytes no longer match its sha256; --skip-checks lets the alias move anyway.
            forced = await asyncio.to_thread(promote, tmp_path / "registry", C, "--skip-checks")
            assert forced.returncode == 0, forced.stderr
            moved = time.monotonic()
            refused = await readiness_until(
                client, lambda r: C in r["checks"]["rollout"]["refused"]
            )
            refusal_seen = time.monotonic() - moved
            await asyncio.sleep(3 * FOLLOW_INTERVAL_S)  # the follower looks again: still refused
            await load.finish()
            failures = await metric(client, "frameworm_model_load_failures_total", model=MODEL)
            assert failures == 1.0
            after = await readiness(client)
        assert after["checks"]["rollout"]["refused"].keys() == {C}
        return load, switched.ended, refused, refusal_seen

    try:
        server.wait_ready(90)
        load, switched_at, refused, refusal_seen = asyncio.run(scenario())
    finally:
        stop(server)

    assert load.statuses() == {200: len(load.outcomes)}, load.statuses()
    assert {o.version for o in load.outcomes} == {A, B}, "C was never served"
    for client, sequence in versions_by_client(load.outcomes).items():
        assert only_moves_forward(sequence, [A, B]), (client, sequence)
    later = [o for o in load.outcomes if o.sent > switched_at]
    assert later and all(o.version == B for o in later), "after the switch, only B"
    assert refused["status_code"] == 200, "a refused version leaves the server ready"
    assert refused["checks"]["model"]["version"] == B
    assert refused["checks"]["rollout"]["refused"][C].startswith("IntegrityError")
    record_property("requests", len(load.outcomes))
    record_property("refusal_visible_after_s", round(refusal_seen, 3))


def test_a_version_failing_at_run_time_is_rolled_back_and_pinned_until_the_alias_moves(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register_mlp(registry, A, tmp_path, seed=0)
    register_guarded(registry, B, tmp_path, seed=1)  # passes its golden check
    register_mlp(registry, C, tmp_path, seed=2)
    registry.promote(MODEL, A, "production", actor="tests")
    env = {
        **FOLLOWING,
        "FRAMEWORM_AUTO_ROLLBACK": "true",
        "FRAMEWORM_ROLLBACK_WINDOW_S": "60",
        "FRAMEWORM_ROLLBACK_MIN_REQUESTS": "5",
        "FRAMEWORM_ROLLBACK_MAX_ERROR_RATE": "0.2",
    }
    server = launch(tmp_path, tmp_path / "registry", env)

    async def scenario() -> dict[str, Any]:
        load = Load(server.url, clients=4, body=LARGE_INPUTS, pause_s=0.02)
        load.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            await load.until(20)
            await asyncio.to_thread(checked_promotion, registry, B)  # its golden check passes
            await load.until_seen(lambda o: o.status == 500)
            rolled_back = await readiness_until(
                client, lambda r: r["checks"]["rollout"]["pinned_against"] == B
            )
            pinned_at = time.monotonic()
            await asyncio.sleep(4 * FOLLOW_INTERVAL_S)  # the follower does not go back to B
            rollbacks = await metric(client, "frameworm_model_rollbacks_total", model=MODEL)
            c_promoted_at = time.monotonic()
            await asyncio.to_thread(checked_promotion, registry, C)
            await load.until_seen(lambda o: o.version == C)
            released = await readiness(client)
            await load.finish()
        return {
            "load": load,
            "rolled_back": rolled_back,
            "pinned_at": pinned_at,
            "rollbacks": rollbacks,
            "c_promoted_at": c_promoted_at,
            "released": released,
        }

    try:
        server.wait_ready(90)
        seen = asyncio.run(scenario())
    finally:
        stop(server)

    load: Load = seen["load"]
    failed = [o for o in load.outcomes if o.status != 200]
    assert {o.status for o in failed} == {500}, load.statuses()
    assert all(o.code == "internal-error" for o in failed)
    assert {o.version for o in load.outcomes if o.status == 200} == {A, C}, "B never answered"
    rollout = seen["rolled_back"]["checks"]["rollout"]
    assert seen["rolled_back"]["status_code"] == 200
    assert seen["rolled_back"]["checks"]["model"]["version"] == A
    assert f"rolled back from {B} to {A}" in rollout["reason"]
    pinned = [o for o in load.outcomes if seen["pinned_at"] <= o.sent < seen["c_promoted_at"]]
    assert pinned and {(o.status, o.version) for o in pinned} == {(200, A)}, "stayed on A"
    assert seen["rollbacks"] == 1.0
    assert seen["released"]["checks"]["rollout"]["pinned_against"] is None
    assert seen["released"]["checks"]["model"]["version"] == C
    served = [o for o in load.outcomes if o.status == 200]
    for client, sequence in versions_by_client(served).items():
        assert only_moves_forward(sequence, [A, C]), (client, sequence)
    record_property("requests", len(load.outcomes))
    record_property("failed_before_rollback", len(failed))
