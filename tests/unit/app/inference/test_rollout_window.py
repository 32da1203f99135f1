"""StageFollower: a rollback window ends when it says, and /readyz's reason ends with the
refusal or pin it explained."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from app.inference import rollout
from models.stages import ModelIndex
from tests.unit.app.inference.test_rollout import follower, promote_a_then_b, serving


def test_a_breach_after_the_window_rolls_nothing_back(tmp_path: Path) -> None:
    """The window was checked only at the next poll (or after a load): a version was rolled
    back seconds after its window had ended."""
    stage, host = follower(tmp_path, rollback_max_error_rate=0.1, rollback_window_s=0.05)

    async def main() -> None:
        await stage.switch_to("B")
        time.sleep(0.1)  # the window ends; no poll comes meanwhile
        for _ in range(5):
            stage.record("B", False, 0.01)
        await stage.rollbacks_done()

    asyncio.run(main())
    assert serving(host) == "B" and stage.pinned_against is None


def test_the_reason_for_a_pin_ends_when_the_alias_is_set_again(tmp_path: Path) -> None:
    stage, host = follower(tmp_path, rollback_max_error_rate=0.1)
    registry = host.registry

    async def main() -> None:
        await promote_a_then_b(stage, registry)
        stage.record("B", False, 0.01)
        await stage.rollbacks_done()
        assert "pinned until the alias moves again" in stage.last_event
        registry.rollback("A")  # the operator agrees: the alias back to what is served
        await stage.check_once()

    asyncio.run(main())
    assert serving(host) == "A"
    assert stage.last_event == "following the stage alias"


def test_the_reason_for_a_refusal_ends_when_the_alias_is_set_again(tmp_path: Path) -> None:
    stage, host = follower(tmp_path, auto_rollback=False)
    registry = host.registry
    host.broken.add("B")

    async def main() -> None:
        await promote_a_then_b(stage, registry)
        assert "B" in stage.refused and "B" in stage.last_event
        registry.rollback("A")
        await stage.check_once()

    asyncio.run(main())
    assert not stage.refused and stage.last_event == "following the stage alias"


def test_a_registry_read_that_hangs_is_said_while_it_lasts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that failed was said at once; one that hung said nothing: /readyz kept saying
    "following the stage alias"."""
    monkeypatch.setattr(rollout, "READ_STALL_S", 0.05)
    stage, host = follower(tmp_path)
    released = threading.Event()
    answer = host.registry.index

    def stalled(model: str) -> ModelIndex:
        released.wait(30)
        return answer(model)

    host.registry.index = stalled  # type: ignore[method-assign]

    async def main() -> None:
        poll = asyncio.ensure_future(stage.check_once())
        await asyncio.sleep(0.3)
        assert stage.last_event.startswith("cannot follow the stage alias: a registry read has")
        released.set()
        await poll

    asyncio.run(main())
    assert stage.last_event == "following the stage alias"
