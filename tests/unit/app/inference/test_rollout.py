"""StageFollower: which versions stay loaded across switches, and when health is judged."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from app.config import Settings
from app.inference.host import ModelHost
from app.inference.rollout import StageFollower, VersionHealth
from models.errors import RegistryError
from models.stages import ModelIndex, move_alias


@dataclass(frozen=True)
class FakeManifest:
    version: str
    signature: str = "same"


@dataclass
class FakeRunner:
    manifest: FakeManifest
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeRegistry:
    """Manifests for any version; the index is a real one, moved with `promote`."""

    ix: ModelIndex = field(default_factory=lambda: ModelIndex(name="m"))

    def manifest(self, model: str, version: str) -> FakeManifest:
        return FakeManifest(version)

    def index(self, model: str) -> ModelIndex:
        return self.ix

    def promote(self, version: str) -> None:
        move_alias(self.ix, "production", version, "promote", "tester", "")

    def rollback(self, version: str) -> None:
        move_alias(self.ix, "production", version, "rollback", "tester", "")


@dataclass
class FakeHost:
    """Serves one runner; `prepare_async` makes a runner per version and remembers it."""

    runner: FakeRunner | None = None
    registry: FakeRegistry = field(default_factory=FakeRegistry)
    device: str = "cpu"
    made: dict[str, FakeRunner] = field(default_factory=dict)

    @property
    def manifest(self) -> FakeManifest | None:
        return self.runner.manifest if self.runner else None

    broken: set[str] = field(default_factory=set)  # versions whose load fails

    async def prepare_async(self, manifest: FakeManifest) -> FakeRunner:
        if manifest.version in self.broken:
            raise RegistryError(f"{manifest.version} does not load")
        runner = self.made[manifest.version] = FakeRunner(manifest)
        return runner

    def swap(self, runner: FakeRunner) -> FakeRunner | None:
        previous, self.runner = self.runner, runner
        return previous


def follower(tmp_path: Path, **overrides: Any) -> tuple[StageFollower, FakeHost]:
    values: dict[str, Any] = {
        "registry": str(tmp_path),
        "model": "m",
        "auto_rollback": True,
        "rollback_min_requests": 1,
    }
    values.update(overrides)
    host = FakeHost()
    host.runner = host.made["A"] = FakeRunner(FakeManifest("A"))
    return StageFollower(cast(ModelHost, host), Settings(_env_file=None, **values), None), host


def test_a_version_kept_for_rollback_is_released_when_the_alias_moves_on(tmp_path: Path) -> None:
    stage, host = follower(tmp_path)

    async def main() -> None:
        await stage.switch_to("B")  # A is kept for rollback
        await stage.switch_to("C")  # within B's window: B is the fallback now, A goes

    asyncio.run(main())
    assert host.made["A"].closed
    assert not host.made["B"].closed  # kept: C's rollback target
    assert not host.made["C"].closed  # serving
    stage.close()
    assert host.made["B"].closed


def test_a_breach_rolls_back_once_however_many_outcomes_follow(tmp_path: Path) -> None:
    stage, host = follower(tmp_path, rollback_max_error_rate=0.1)

    async def main() -> None:
        await stage.switch_to("B")
        for _ in range(5):
            stage.record("B", False, 0.01)
        await stage.rollbacks_done()

    asyncio.run(main())
    assert host.runner is host.made["A"]
    assert host.made["B"].closed
    assert stage.pinned_against == "B"
    assert stage.last_event.startswith("rolled back from B to A: error rate")


def test_the_p99_is_judged_at_most_once_an_interval_not_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage, _ = follower(tmp_path, rollback_max_p99_ms=50.0)
    judged: list[int] = []
    real_p99 = VersionHealth.p99

    def counted(health: VersionHealth) -> float:
        judged.append(len(health.latencies))
        return real_p99(health)

    monkeypatch.setattr(VersionHealth, "p99", counted)

    async def main() -> None:
        await stage.switch_to("B")
        for _ in range(1000):
            stage.record("B", True, 0.001)

    asyncio.run(main())
    assert judged == [1]  # the first outcome; the next judgement waits for the interval


def serving(host: FakeHost) -> str:
    assert host.runner is not None
    return host.runner.manifest.version


async def promote_a_then_b(stage: StageFollower, registry: FakeRegistry) -> None:
    """The alias set to A, then to B, each followed."""
    for version in ("A", "B"):
        registry.promote(version)
        await stage.check_once()


def test_a_rollback_pin_lasts_until_the_alias_is_set_again_even_to_the_serving_version(
    tmp_path: Path,
) -> None:
    stage, host = follower(tmp_path, rollback_max_error_rate=0.1)
    registry = host.registry

    async def main() -> None:
        await promote_a_then_b(stage, registry)
        assert serving(host) == "B"
        stage.record("B", False, 0.01)
        await stage.rollbacks_done()
        assert serving(host) == "A" and stage.pinned_against == "B"
        await stage.check_once()  # the alias still says B: pinned
        assert serving(host) == "A"
        registry.promote("A")  # the operator moves the alias back to what is served...
        await stage.check_once()
        assert stage.pinned_against is None
        registry.promote("B")  # ...and promotes the fixed B again
        await stage.check_once()
        assert serving(host) == "B"

    asyncio.run(main())


def test_a_refused_version_is_tried_again_once_the_alias_is_set_again(tmp_path: Path) -> None:
    stage, host = follower(tmp_path, auto_rollback=False)
    registry = host.registry
    host.broken.add("B")

    async def main() -> None:
        registry.promote("A")
        registry.promote("B")
        await stage.check_once()
        assert serving(host) == "A" and "B" in stage.refused
        await stage.check_once()  # the same move: not tried again
        assert serving(host) == "A"
        host.broken.clear()  # a transient failure, or the bytes were repaired
        registry.promote("A")
        registry.promote("B")  # set again between two polls: still a new move
        await stage.check_once()
        assert serving(host) == "B" and not stage.refused

    asyncio.run(main())


def test_after_an_operators_rollback_no_automatic_rollback_returns_to_what_was_left(
    tmp_path: Path,
) -> None:
    """`registry rollback` from B to A was a switch like any other: B was kept as A's fallback,
    and A's first breach served B again, pinned, against the operator's choice."""
    stage, host = follower(tmp_path, rollback_max_error_rate=0.1)
    registry = host.registry

    async def main() -> None:
        await promote_a_then_b(stage, registry)
        registry.rollback("A")  # the operator goes back
        await stage.check_once()
        assert serving(host) == "A" and host.made["B"].closed  # nothing kept to return to
        stage.record("A", False, 0.01)
        await stage.rollbacks_done()
        assert serving(host) == "A"

    asyncio.run(main())


def test_an_unreadable_registry_is_said_once_and_shown_while_it_lasts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A traceback every poll (20 lines every 0.5 s), while /readyz?verbose kept the last event."""
    stage, host = follower(tmp_path, follow_interval_s=0.1)  # the least allowed
    broken = RegistryError("index.json is not valid JSON")

    def unreadable(model: str) -> ModelIndex:
        raise broken

    async def main() -> None:
        task = asyncio.create_task(stage.run())
        await asyncio.sleep(0.35)  # four polls
        assert stage.last_event.startswith("cannot follow the stage alias: RegistryError")
        host.registry.index = lambda model: ModelIndex(name="m")  # type: ignore[method-assign]
        await asyncio.sleep(0.25)
        task.cancel()

    host.registry.index = unreadable  # type: ignore[method-assign]
    with caplog.at_level("INFO", logger="frameworm"):
        asyncio.run(main())
    failures = [r for r in caplog.records if "following the stage alias failed" in r.getMessage()]
    assert len(failures) == 1 and not failures[0].exc_info  # one line, no traceback
    assert stage.last_event == "following the stage alias"


def test_a_version_the_alias_left_while_it_loaded_is_not_switched_to(tmp_path: Path) -> None:
    """An operator's rollback during a slow load: the version rolled back from was swapped in
    and served all the same (a failing one, 500s)."""
    stage, host = follower(tmp_path, auto_rollback=False)
    registry = host.registry
    real_prepare = host.prepare_async

    async def slow_prepare(manifest: FakeManifest) -> FakeRunner:
        assert stage.last_event == "loading B"  # what /readyz?verbose says while it loads
        runner = await real_prepare(manifest)
        registry.rollback("A")  # while B loads
        return runner

    async def main() -> None:
        registry.promote("A")
        registry.promote("B")
        host.prepare_async = slow_prepare  # type: ignore[method-assign]
        await stage.check_once()

    asyncio.run(main())
    assert serving(host) == "A"
    assert host.made["B"].closed  # loaded for nothing, released
    assert "moved on" in stage.last_event


def test_rolling_back_to_the_version_kept_for_rollback_swaps_it_back_without_a_load(
    tmp_path: Path,
) -> None:
    """It loaded the kept version again: three versions in memory in the middle of a rollback."""
    stage, host = follower(tmp_path)
    registry = host.registry

    async def main() -> None:
        await promote_a_then_b(stage, registry)
        kept = host.made["A"]
        registry.rollback("A")
        await stage.check_once()
        assert host.runner is kept and not kept.closed  # the same runner, not a new load
        assert host.made["B"].closed  # an operator's rollback keeps no fallback

    asyncio.run(main())


def test_a_rollback_decided_as_a_newer_switch_ended_leaves_the_newer_version(
    tmp_path: Path,
) -> None:
    """The rollback task ran after a switch to C: it swapped A in and released the healthy C."""
    stage, host = follower(tmp_path, rollback_max_error_rate=0.1)
    real_prepare = host.prepare_async

    async def prepare_while_b_fails(manifest: FakeManifest) -> FakeRunner:
        runner = await real_prepare(manifest)
        stage.record("B", False, 0.01)  # the breach as C's load ends: the rollback is a task
        return runner  # and the switch goes on in this turn of the loop, before it

    async def main() -> None:
        await stage.switch_to("B")  # A kept
        host.prepare_async = prepare_while_b_fails  # type: ignore[method-assign]
        await stage.switch_to("C")
        await stage.rollbacks_done()

    asyncio.run(main())
    assert serving(host) == "C"
    assert host.made["A"].closed  # the rollback's target, no longer needed
    assert stage.pinned_against is None


def test_a_stalled_registry_read_does_not_hold_the_end_of_the_event_loop(tmp_path: Path) -> None:
    """asyncio.to_thread's executor is joined without a bound when the loop ends (Python 3.11):
    a SIGTERM while S3 stalled a poll kept the process up for minutes."""
    stage, host = follower(tmp_path)
    released = threading.Event()

    def stalled(model: str) -> ModelIndex:
        released.wait(30)
        return host.registry.ix

    host.registry.index = stalled  # type: ignore[method-assign]

    async def main() -> None:
        poll = asyncio.ensure_future(stage.check_once())
        await asyncio.sleep(0.05)
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll

    started = time.monotonic()
    asyncio.run(main())
    ended = time.monotonic() - started
    released.set()
    assert ended < 10


def test_a_registry_unreadable_after_the_load_still_switches_and_leaks_nothing(
    tmp_path: Path,
) -> None:
    """The alias is read again after the load; that read failing must not strand the runner."""
    stage, host = follower(tmp_path, auto_rollback=False)
    registry = host.registry
    real_index = registry.index
    reads: list[int] = []

    def index_failing_second_time(model: str) -> ModelIndex:
        reads.append(1)
        if len(reads) == 2:
            raise RegistryError("the registry is unreachable")
        return real_index(model)

    async def main() -> None:
        registry.promote("A")
        registry.promote("B")
        registry.index = index_failing_second_time  # type: ignore[method-assign]
        await stage.check_once()

    asyncio.run(main())
    assert serving(host) == "B"


def test_an_automatic_rollback_during_the_operator_s_leaves_the_served_version_open(
    tmp_path: Path,
) -> None:
    """The operator rolls back from a failing B just as the server does: the switch took the
    kept A (already back in service) for its own and closed it, and every request failed."""
    stage, host = follower(tmp_path, rollback_max_error_rate=0.1)
    registry = host.registry
    reading = threading.Event()
    release = threading.Event()
    real_manifest = registry.manifest

    def held_manifest(model: str, version: str) -> FakeManifest:
        reading.set()
        release.wait(10)
        return real_manifest(model, version)

    async def main() -> None:
        await promote_a_then_b(stage, registry)  # A kept for rollback
        registry.manifest = held_manifest  # type: ignore[method-assign]
        registry.rollback("A")
        poll = asyncio.ensure_future(stage.check_once())
        while not reading.is_set():
            await asyncio.sleep(0.01)
        stage.record("B", False, 0.01)  # the server's own rollback, while the poll reads
        await stage.rollbacks_done()
        release.set()
        await poll

    asyncio.run(main())
    assert serving(host) == "A"
    assert not host.made["A"].closed
    assert host.made["B"].closed
