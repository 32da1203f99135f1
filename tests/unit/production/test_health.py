"""HealthChecker and HealthStatus."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable

import pytest

from app.production import HealthChecker, HealthStatus


def test_status_details_are_not_shared_between_instances() -> None:
    first, second = HealthStatus(True), HealthStatus(True)
    first.details["x"] = 1
    assert second.details == {}


def test_status_to_dict_carries_every_field_and_copies_details() -> None:
    status = HealthStatus(False, "down", {"host": "db"}, timestamp=12.5)
    data = status.to_dict()
    assert data == {
        "healthy": False,
        "message": "down",
        "details": {"host": "db"},
        "timestamp": 12.5,
    }
    data["details"]["host"] = "changed"
    assert status.details == {"host": "db"}


def test_is_ready_runs_the_startup_checks_without_an_explicit_check_startup_call() -> None:
    health = HealthChecker()
    calls: list[str] = []

    def startup() -> bool:
        calls.append("startup")
        return True

    health.add_startup_check("model", startup)
    health.add_readiness_check("model", lambda: True)
    assert health.is_ready() is True
    assert calls == ["startup"]
    assert health.startup_complete


def test_is_ready_is_false_while_a_startup_check_fails_and_true_once_it_passes() -> None:
    loaded = threading.Event()
    health = HealthChecker()
    health.add_startup_check("model", loaded.is_set)
    assert health.is_ready() is False
    assert not health.startup_complete
    loaded.set()
    assert health.is_ready() is True


def test_startup_checks_are_not_run_again_once_startup_completed() -> None:
    calls: list[int] = []

    def warmup() -> bool:
        calls.append(1)
        return True

    health = HealthChecker()
    health.add_startup_check("warmup", warmup)
    assert health.check_startup() and health.check_startup() and health.is_ready()
    assert calls == [1]


def test_a_name_used_in_two_categories_keeps_separate_results() -> None:
    health = HealthChecker()
    health.add_liveness_check("model", lambda: HealthStatus(True, "process up"))
    health.add_readiness_check("model", lambda: HealthStatus(False, "not loaded"))
    health.add_startup_check("model", lambda: HealthStatus(True, "started"))
    assert health.is_alive() is True
    assert health.is_ready() is False
    report = health.get_health_report()
    assert report["liveness"]["model"]["message"] == "process up"
    assert report["readiness"]["model"]["message"] == "not loaded"
    assert report["startup"]["model"]["message"] == "started"


def test_a_check_that_raises_is_unhealthy_with_the_exception_as_its_reason() -> None:
    def broken() -> bool:
        raise ConnectionError("db refused")

    health = HealthChecker()
    health.add_readiness_check("database", broken)
    assert health.is_ready() is False
    status = health.results("readiness")["database"]
    assert not status.healthy
    assert status.message == "ConnectionError: db refused"


@pytest.mark.parametrize(
    ("value", "healthy"), [(True, True), (1, True), (False, False), (None, False)]
)
def test_truthy_and_falsy_results_become_statuses(value: object, healthy: bool) -> None:
    health = HealthChecker()
    health.add_liveness_check("x", lambda: value)
    assert health.is_alive() is healthy


def test_report_lists_every_category_and_the_overall_state() -> None:
    health = HealthChecker()
    health.add_liveness_check("basic", lambda: HealthStatus(True))
    health.add_readiness_check("model", lambda: True)
    report = health.get_health_report()
    assert report["alive"] is True and report["ready"] is True
    assert report["startup_complete"] is True and report["startup_timed_out"] is False
    assert set(report["liveness"]) == {"basic"} and set(report["readiness"]) == {"model"}
    assert report["startup"] == {}
    assert report["timestamp"] == pytest.approx(time.time(), abs=5)


def test_report_says_when_startup_is_still_incomplete_past_the_startup_timeout() -> None:
    health = HealthChecker(startup_timeout=1e-9)
    health.add_startup_check("model", lambda: False)
    report = health.get_health_report()
    assert report["startup_complete"] is False
    assert report["startup_timed_out"] is True
    assert health.startup_timed_out


def test_an_async_check_given_to_the_sync_api_is_unhealthy_and_never_left_unawaited() -> None:
    async def check() -> bool:
        return True

    health = HealthChecker()
    health.add_readiness_check("async", check)
    assert health.is_ready() is False
    assert "async" in health.results("readiness")["async"].message


def test_async_report_runs_async_and_sync_checks_and_bounds_a_hung_one() -> None:
    release = threading.Event()

    async def ok() -> HealthStatus:
        return HealthStatus(True, "async ok")

    def hung() -> bool:
        return release.wait(10)

    health = HealthChecker(check_timeout_s=0.05)
    health.add_liveness_check("loop", ok)
    health.add_readiness_check("hung", hung)
    health.add_readiness_check("sync", lambda: True)
    try:
        report = asyncio.run(health.areport())
    finally:
        release.set()
    assert report["alive"] is True and report["ready"] is False
    assert report["readiness"]["hung"]["message"] == "timed out after 0.05s"
    assert report["readiness"]["sync"]["healthy"] is True
    assert report["liveness"]["loop"]["message"] == "async ok"


def test_async_readiness_runs_startup_checks_first() -> None:
    async def failing() -> bool:
        raise RuntimeError("still loading")

    health = HealthChecker()
    health.add_startup_check("model", failing)
    assert asyncio.run(health.ais_ready()) is False
    assert health.results("startup")["model"].message == "RuntimeError: still loading"


def test_checks_can_be_added_and_run_from_many_threads_at_once() -> None:
    health = HealthChecker()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                health.add_readiness_check(f"c{n}-{i}", lambda: True)
                assert health.is_ready()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(health.results("readiness")) == 400


@pytest.mark.parametrize("bound", [math.inf, 1e12, math.nan, 0.0])
def test_a_check_timeout_that_is_no_bound_a_thread_can_wait_is_refused(bound: float) -> None:
    """inf made is_ready() raise OverflowError; NaN timed every sync check out at once."""
    with pytest.raises(ValueError, match="positive number of seconds"):
        HealthChecker(check_timeout_s=bound)
    with pytest.raises(ValueError, match="positive number of seconds"):
        HealthChecker(startup_timeout=bound)


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        HealthChecker(startup_timeout=0)
    with pytest.raises(TypeError):
        HealthChecker().add_liveness_check("x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HealthChecker().add_check("other", "x", lambda: True)  # type: ignore[arg-type]


def hung_check(release: threading.Event, calls: list[int]) -> Callable[[], bool]:
    def hung() -> bool:
        calls.append(1)
        return release.wait(10)

    return hung


def test_a_hung_sync_check_runs_once_however_many_async_probes_ask() -> None:
    release = threading.Event()
    calls: list[int] = []
    health = HealthChecker(check_timeout_s=0.01)
    health.add_liveness_check("hung", hung_check(release, calls))
    before = threading.active_count()

    async def probe_many() -> list[str]:
        messages = []
        for _ in range(20):
            assert await health.ais_alive() is False
            messages.append(health.results("liveness")["hung"].message)
        return messages

    try:
        messages = asyncio.run(probe_many())
        # One thread for the one run: no thread per probe.
        assert calls == [1]
        assert threading.active_count() <= before + 1
        assert messages[0] == "timed out after 0.01s"
        assert set(messages[1:]) == {"timed out after 0.01s (still running)"}
    finally:
        release.set()
    # Once the run returns, the next probe gets a result again (the old run's or a new one's).
    health.check_timeout_s = 10
    assert asyncio.run(health.ais_alive()) is True


def test_the_sync_api_bounds_a_hung_check_and_never_runs_it_twice_at_once() -> None:
    release = threading.Event()
    calls: list[int] = []
    health = HealthChecker(check_timeout_s=0.01)
    health.add_readiness_check("hung", hung_check(release, calls))
    health.add_readiness_check("fine", lambda: True)
    try:
        assert health.is_ready() is False
        assert health.results("readiness")["hung"].message == "timed out after 0.01s"
        for _ in range(10):
            assert health.is_ready() is False
            report = health.get_health_report()
        assert calls == [1]
        assert report["readiness"]["hung"]["message"] == "timed out after 0.01s (still running)"
        assert report["readiness"]["fine"]["healthy"] is True
        # The async path shares the run in flight instead of starting its own.
        assert asyncio.run(health.ais_ready()) is False
        assert calls == [1]
    finally:
        release.set()
    health.check_timeout_s = 10
    assert health.is_ready() is True


def test_probes_that_overlap_share_the_run_of_a_slow_check() -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> bool:
        calls.append(1)
        entered.set()
        return release.wait(30)

    health = HealthChecker(check_timeout_s=30)
    health.add_liveness_check("slow", slow)

    async def overlapping() -> list[bool]:
        first = asyncio.create_task(health.ais_alive())
        await asyncio.to_thread(entered.wait, 30)  # the first probe's run has started
        second = asyncio.create_task(health.ais_alive())
        for _ in range(20):  # a few loop turns, no I/O: the second probe finds the run
            await asyncio.sleep(0)
        release.set()
        return list(await asyncio.gather(first, second))

    try:
        assert asyncio.run(overlapping()) == [True, True]
    finally:
        release.set()
    assert calls == [1]


class AsyncClient:
    """Like redis.asyncio or httpx: its I/O completes through futures of the loop it was made on."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def ping(self) -> bool:
        future = self.loop.create_future()
        self.loop.call_soon(future.set_result, True)
        return bool(await future) and asyncio.get_running_loop() is self.loop


class AsyncCallableCheck:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def __call__(self) -> bool:
        return await self.client.ping()


def test_an_async_client_check_runs_on_the_probes_loop() -> None:
    async def probe() -> dict[str, HealthStatus]:
        client = AsyncClient()
        health = HealthChecker()
        health.add_readiness_check("lambda", lambda: client.ping())
        health.add_readiness_check("callable", AsyncCallableCheck(client))
        assert await health.ais_ready() is True
        return health.results("readiness")

    results = asyncio.run(probe())
    assert all(status.healthy for status in results.values()), results


@pytest.mark.parametrize(
    "exc", [SystemExit(3), KeyboardInterrupt(), asyncio.CancelledError("its own")]
)
def test_a_check_raising_a_base_exception_fails_the_probe_without_raising(
    exc: BaseException,
) -> None:
    def sync_check() -> bool:
        raise exc

    async def async_check() -> bool:
        raise exc

    health = HealthChecker()
    health.add_liveness_check("sync", sync_check)
    health.add_readiness_check("async", async_check)
    health.add_readiness_check("fine", lambda: True)
    assert asyncio.run(health.ais_ready()) is False
    assert asyncio.run(health.ais_alive()) is False
    assert health.is_alive() is False
    expected = type(exc).__name__
    assert health.results("liveness")["sync"].message.startswith(expected)
    assert health.results("readiness")["async"].message.startswith(expected)
    assert health.results("readiness")["fine"].healthy


def test_cancelling_a_probe_still_cancels_it() -> None:
    async def forever() -> bool:
        await asyncio.Event().wait()
        return True

    health = HealthChecker(check_timeout_s=30)
    health.add_liveness_check("forever", forever)

    async def main() -> None:
        probe = asyncio.create_task(health.ais_alive())
        await asyncio.sleep(0.01)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe

    asyncio.run(main())


def test_an_async_check_that_answers_after_its_bound_is_timed_out_not_healthy() -> None:
    """Cancelled at its bound, the check went on (its clean-up awaited for 2 s) and answered
    True: asyncio.wait_for waited for it and passed the late answer on as healthy."""

    async def check() -> bool:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(2)
        return True

    checker = HealthChecker(check_timeout_s=0.2)
    checker.add_readiness_check("db", check)

    async def probe() -> tuple[bool, float]:
        started = time.monotonic()
        return await checker.ais_ready(), time.monotonic() - started

    ready, took = asyncio.run(probe())
    assert ready is False and took < 1.5
    assert "timed out" in checker.results("readiness")["db"].message


def test_a_hung_async_check_has_one_run_in_flight_and_later_probes_join_it() -> None:
    """Each probe cancelled the run at its bound and started another; the thread each run had
    handed its blocking call to went on, and eight probes took every default-executor thread."""
    release = threading.Event()
    runs: list[int] = []

    def blocking_ping() -> bool:
        runs.append(1)
        release.wait(30)
        return True

    async def check() -> bool:
        return await asyncio.to_thread(blocking_ping)

    checker = HealthChecker(check_timeout_s=0.05)
    checker.add_readiness_check("db", check)

    async def probes() -> list[str]:
        messages = []
        for _ in range(8):
            assert await checker.ais_ready() is False
            messages.append(checker.results("readiness")["db"].message)
        release.set()
        return messages

    messages = asyncio.run(probes())
    assert len(runs) == 1
    assert "still running" in messages[-1]
