"""DynamicBatcher: packing, splitting, bounds, deadlines, failures and closing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from app.errors import Problem
from app.inference.batcher import DynamicBatcher
from app.inference.observer import NoObserver
from app.inference.pending import Served
from tests.unit.app.inference.batcher_support import (
    FakeRunner,
    is_problem,
    items,
    later,
    make_batcher,
    run,
)


def test_an_idle_batcher_dispatches_a_lone_request_at_once() -> None:
    runner = FakeRunner()

    async def main() -> tuple[Served, float]:
        batcher = make_batcher(runner, max_delay_s=5.0)
        start = time.monotonic()
        served = await batcher.submit(items(1.0), 1, later())
        elapsed = time.monotonic() - start
        await batcher.close(1)
        return served, elapsed

    served, elapsed = run(main)
    assert elapsed < 1.0  # far below the 5 s max delay
    assert served.version == "9.9.9"
    assert served.outputs[0].tolist() == [[2.0]]


def test_concurrent_requests_are_packed_into_one_batch_and_split_back() -> None:
    runner = FakeRunner()

    async def main() -> list[Served]:
        batcher = make_batcher(runner, max_batch_size=8)
        served = await asyncio.gather(
            batcher.submit(items(1.0), 1, later()),
            batcher.submit(items(2.0, 3.0), 2, later()),
            batcher.submit(items(4.0), 1, later()),
        )
        await batcher.close(1)
        return list(served)

    first, second, third = run(main)
    assert runner.batch_sizes == [4]
    assert first.outputs[0].tolist() == [[2.0]]
    assert second.outputs[0].tolist() == [[4.0], [6.0]]
    assert third.outputs[0].tolist() == [[8.0]]


def test_batches_hold_at_most_max_batch_size_items() -> None:
    runner = FakeRunner()

    async def main() -> list[Served]:
        batcher = make_batcher(runner, max_batch_size=3)
        served = await asyncio.gather(
            *(batcher.submit(items(float(i), float(i)), 2, later()) for i in range(4))
        )
        await batcher.close(1)
        return served

    served = run(main)
    assert max(runner.batch_sizes) <= 3
    assert sum(runner.batch_sizes) == 8
    assert [s.outputs[0].ravel().tolist() for s in served] == [[2 * i] * 2 for i in range(4)]


def test_a_request_larger_than_max_batch_size_runs_alone() -> None:
    runner = FakeRunner()

    async def main() -> Served:
        batcher = make_batcher(runner, max_batch_size=2)
        served = await batcher.submit(items(1, 2, 3, 4, 5), 5, later())
        await batcher.close(1)
        return served

    assert run(main).outputs[0].ravel().tolist() == [2, 4, 6, 8, 10]
    assert runner.batch_sizes == [5]


@pytest.mark.parametrize("max_delay_s", [0.1, 0.4])
def test_a_busy_batcher_waits_max_delay_for_a_batch_to_fill(max_delay_s: float) -> None:
    runner = FakeRunner()

    async def main() -> float:
        batcher = make_batcher(runner, max_batch_size=8, max_delay_s=max_delay_s)
        await asyncio.gather(*(batcher.submit(items(1.0), 1, later()) for _ in range(2)))
        start = time.monotonic()  # the last batch held 2 items: the server counts as busy
        await batcher.submit(items(1.0), 1, later())
        waited = time.monotonic() - start
        await batcher.close(1)
        return waited

    waited = run(main)
    # The wait is max_delay, not a multiple of it; the slack above is for a loaded machine.
    assert max_delay_s * 0.95 <= waited < max_delay_s + 0.25
    assert runner.batch_sizes == [2, 1]


def test_a_full_queue_sheds_with_503_overloaded_and_retry_after() -> None:
    runner = FakeRunner(gate=asyncio.Event())

    async def main() -> Problem:
        batcher = make_batcher(runner, max_queue_items=2)
        in_flight = asyncio.create_task(batcher.submit(items(1.0), 1, later()))
        await runner.started.wait()
        queued = asyncio.create_task(batcher.submit(items(1.0, 2.0), 2, later()))
        await asyncio.sleep(0)
        try:
            with pytest.raises(Problem) as caught:
                await batcher.submit(items(3.0), 1, later())
        finally:
            assert runner.gate is not None
            runner.gate.set()
            await asyncio.gather(in_flight, queued)
            await batcher.close(1)
        return caught.value

    problem = run(main)
    assert (problem.code, problem.status) == ("overloaded", 503)
    assert int(problem.headers["retry-after"]) >= 1


def test_a_request_whose_deadline_has_passed_is_504_and_never_reaches_the_model() -> None:
    runner = FakeRunner()

    async def main() -> None:
        batcher = make_batcher(runner)
        with pytest.raises(Problem, check=is_problem("deadline-exceeded")) as caught:
            await batcher.submit(items(1.0), 1, time.monotonic() - 0.001)
        assert caught.value.status == 504
        await batcher.close(1)

    run(main)
    assert runner.batches == []


def test_a_request_that_expires_in_the_queue_is_504_before_the_model_runs() -> None:
    runner = FakeRunner(gate=asyncio.Event())

    async def main() -> None:
        batcher = make_batcher(runner)
        in_flight = asyncio.create_task(batcher.submit(items(1.0), 1, later()))
        await runner.started.wait()
        with pytest.raises(Problem, check=is_problem("deadline-exceeded")):
            await batcher.submit(items(7.0), 1, later(0.05))
        assert runner.gate is not None
        runner.gate.set()
        await in_flight
        await batcher.submit(items(5.0), 1, later())
        await batcher.close(1)

    run(main)
    seen = [float(v) for batch in runner.batches for v in batch[0].ravel()]
    assert 7.0 not in seen
    assert seen == [1.0, 5.0]


def test_requests_given_up_in_the_queue_stop_counting_against_it_at_once() -> None:
    runner = FakeRunner(gate=asyncio.Event())

    async def main() -> tuple[int, Served]:
        batcher = make_batcher(runner, max_queue_items=4)
        in_flight = asyncio.create_task(batcher.submit(items(1.0), 1, later()))
        await runner.started.wait()
        expiring = [batcher.submit(items(7.0), 1, later(0.05)) for _ in range(2)]
        gone = asyncio.create_task(batcher.submit(items(8.0, 8.0), 2, later()))
        await asyncio.sleep(0)
        gone.cancel()  # its client went away
        await asyncio.gather(*expiring, gone, return_exceptions=True)
        queued = batcher.queued_items  # the model is still busy: nothing was taken
        # The queue has room for 4 items again, though the entries wait in the deque.
        waiting = asyncio.create_task(batcher.submit(items(2.0, 3.0, 4.0, 5.0), 4, later()))
        await asyncio.sleep(0)
        assert runner.gate is not None
        runner.gate.set()
        await in_flight
        served = await waiting
        await batcher.close(1)
        return queued, served

    queued, served = run(main)
    assert queued == 0
    assert served.outputs[0].ravel().tolist() == [4.0, 6.0, 8.0, 10.0]
    seen = [float(v) for batch in runner.batches for v in batch[0].ravel()]
    assert 7.0 not in seen and 8.0 not in seen


def test_a_request_with_more_items_than_the_queue_holds_is_413_not_a_retry() -> None:
    runner = FakeRunner()

    async def main() -> Problem:
        batcher = make_batcher(runner, max_queue_items=2)
        with pytest.raises(Problem) as caught:
            await batcher.submit(items(1.0, 2.0, 3.0), 3, later())
        await batcher.close(1)
        return caught.value

    problem = run(main)
    assert (problem.code, problem.status) == ("payload-too-large", 413)
    assert "retry-after" not in problem.headers
    assert runner.batches == []


def test_rollout_health_hears_a_request_answered_504_during_its_batch_as_failed() -> None:
    runner = FakeRunner(gate=asyncio.Event())
    heard: list[tuple[str, bool]] = []

    async def main() -> None:
        batcher = make_batcher(runner)
        batcher.outcome_listener = lambda version, ok, seconds: heard.append((version, ok))
        late = asyncio.create_task(batcher.submit(items(1.0), 1, later(0.05)))
        await runner.started.wait()
        with pytest.raises(Problem, check=is_problem("deadline-exceeded")):
            await late  # its deadline passes while the model runs
        gone = asyncio.create_task(batcher.submit(items(2.0), 1, later()))
        on_time = asyncio.create_task(batcher.submit(items(3.0), 1, later()))
        await asyncio.sleep(0)
        gone.cancel()  # the client went away: says nothing about the version
        assert runner.gate is not None
        runner.gate.set()
        await on_time
        await batcher.close(1)

    run(main)
    assert heard == [("9.9.9", False), ("9.9.9", True)]


def test_rollout_health_hears_requests_answered_504_in_a_batch_that_then_fails() -> None:
    """The halves run only the requests still waiting: those answered 504 while the pass ran
    were never reported, so a version that hangs and then raises was judged on nothing."""
    runner = FakeRunner(delay_s=0.3, failures=1)
    heard: list[tuple[str, bool]] = []

    async def main() -> None:
        batcher = make_batcher(runner)
        batcher.outcome_listener = lambda version, ok, seconds: heard.append((version, ok))
        answers = await asyncio.gather(
            *(batcher.submit(items(float(i)), 1, later(0.1)) for i in range(4)),
            return_exceptions=True,
        )
        assert all(isinstance(a, Problem) and a.code == "deadline-exceeded" for a in answers)
        await batcher.close(1)

    run(main)
    assert heard == [("9.9.9", False)] * 4
    assert runner.batch_sizes == [4]  # nothing left waiting to run again in halves


def test_a_client_chosen_deadline_missed_during_its_batch_says_nothing_about_the_version() -> None:
    """A v2 `timeout` shorter than the server's: any client with a key could otherwise make
    a healthy new version look failing, and have automatic rollback take it out."""
    runner = FakeRunner(gate=asyncio.Event())
    heard: list[tuple[str, bool]] = []

    async def main() -> None:
        batcher = make_batcher(runner)
        batcher.outcome_listener = lambda version, ok, seconds: heard.append((version, ok))
        late = asyncio.create_task(batcher.submit(items(1.0), 1, later(0.05), client_deadline=True))
        await runner.started.wait()
        with pytest.raises(Problem, check=is_problem("deadline-exceeded")):
            await late
        on_time = asyncio.create_task(batcher.submit(items(2.0), 1, later()))
        await asyncio.sleep(0)
        assert runner.gate is not None
        runner.gate.set()
        await on_time
        await batcher.close(1)

    run(main)
    assert heard == [("9.9.9", True)]


def test_a_batch_failing_everywhere_fails_its_requests_with_500_and_the_next_succeeds() -> None:
    runner = FakeRunner(failures=3)  # the batch, then each of its two requests alone

    async def main() -> tuple[list[BaseException | Served], Served]:
        batcher = make_batcher(runner)
        failed: list[BaseException | Served] = await asyncio.gather(  # type: ignore[assignment]
            batcher.submit(items(1.0), 1, later()),
            batcher.submit(items(2.0), 1, later()),
            return_exceptions=True,
        )
        served = await batcher.submit(items(3.0), 1, later())
        await batcher.close(1)
        return failed, served

    failed, served = run(main)
    assert runner.batch_sizes == [2, 1, 1, 1]
    for outcome in failed:
        assert isinstance(outcome, Problem)
        assert (outcome.code, outcome.status) == ("internal-error", 500)
        assert "broke" not in outcome.detail
    assert served.outputs[0].tolist() == [[6.0]]


def test_one_request_that_fails_the_model_fails_alone_and_alone_counts_against_it() -> None:
    """A model asserting on values failed the whole batch for one client's input (28 of 40
    requests here), and every one counted against the version: automatic rollback took a
    healthy version out."""
    runner = FakeRunner(gate=asyncio.Event(), poison=1000.0)
    heard: list[tuple[float, bool]] = []

    async def main() -> list[BaseException | Served]:
        batcher = make_batcher(runner)
        batcher.outcome_listener = lambda version, ok, seconds: heard.append((seconds, ok))
        first = asyncio.ensure_future(batcher.submit(items(0.0), 1, later()))
        await runner.started.wait()  # the model is held: the next three queue into one batch
        queued = [batcher.submit(items(v), 1, later()) for v in (1.0, 5000.0, 2.0)]
        gathered = asyncio.gather(*queued, return_exceptions=True)
        await asyncio.sleep(0)
        assert runner.gate is not None
        runner.gate.set()
        await first
        outcomes: list[BaseException | Served] = await gathered
        await batcher.close(1)
        return outcomes

    served_1, poisoned, served_2 = run(main)
    assert runner.batch_sizes == [1, 3, 1, 2, 1, 1]  # in halves, down to the failing one
    assert isinstance(served_1, Served) and served_1.outputs[0].tolist() == [[2.0]]
    assert isinstance(served_2, Served) and served_2.outputs[0].tolist() == [[4.0]]
    assert isinstance(poisoned, Problem) and poisoned.status == 500
    assert [ok for _, ok in heard] == [True, True, False, True]


@dataclass
class OneRowRunner(FakeRunner):
    """Answers one row whatever the batch holds (a reduction over the batch dimension)."""

    async def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [a.sum(axis=0, keepdims=True) for a in await super().run(arrays)]


@pytest.mark.parametrize(
    ("runner", "second"),
    [
        (OneRowRunner(), items(2.0)),  # rows that do not split back into the requests
        (FakeRunner(), [np.zeros((1, 2), dtype=np.float32)]),  # parts that do not concatenate
    ],
    ids=["rows", "concatenate"],
)
def test_a_batch_that_cannot_be_split_or_joined_is_run_one_request_at_a_time(
    runner: FakeRunner, second: list[np.ndarray]
) -> None:
    async def main() -> tuple[list[Served], Served]:
        batcher = make_batcher(runner, max_delay_s=0.05)
        runner.gate = asyncio.Event()  # the first request holds the model: the next two queue
        first = asyncio.ensure_future(batcher.submit(items(0.0), 1, later()))
        await runner.started.wait()
        queued = [batcher.submit(items(1.0), 1, later()), batcher.submit(second, 1, later())]
        gathered = asyncio.gather(*queued)
        await asyncio.sleep(0)
        runner.gate.set()
        await first
        answered: list[Served] = await gathered
        served = await batcher.submit(items(3.0), 1, later())
        await batcher.close(1)
        return answered, served

    answered, served = run(main)
    assert [a.outputs[0].tolist() for a in answered] == [[[2.0]], (second[0] * 2).tolist()]
    assert served.outputs[0].tolist() == [[6.0]]


def test_a_listener_that_raises_does_not_stop_the_batcher() -> None:
    runner = FakeRunner()
    calls: list[bool] = []

    def listener(version: str, ok: bool, seconds: float) -> None:
        calls.append(ok)
        if len(calls) == 1:
            raise RuntimeError("the listener broke")

    async def main() -> Served:
        batcher = make_batcher(runner)
        batcher.outcome_listener = listener
        await batcher.submit(items(1.0), 1, later())  # answered before the listener is told
        served = await batcher.submit(items(3.0), 1, later(2.0))
        await batcher.close(1)
        return served

    assert run(main).outputs[0].tolist() == [[6.0]]
    assert calls == [True, True]


def test_without_a_loaded_model_requests_are_503_not_ready() -> None:
    async def main() -> None:
        batcher = make_batcher(None)
        with pytest.raises(Problem, check=is_problem("not-ready")) as caught:
            await batcher.submit(items(1.0), 1, later())
        assert "retry-after" in caught.value.headers
        await batcher.close(1)

    run(main)


def test_close_answers_queued_items_with_503_and_reports_them_abandoned() -> None:
    runner = FakeRunner(gate=asyncio.Event())
    depths: list[int] = []

    class Observer(NoObserver):
        def queued(self, depth_items: int) -> None:
            depths.append(depth_items)

    async def main() -> tuple[int, BaseException | Served]:
        batcher = make_batcher(runner, max_batch_size=1, observer=Observer())
        in_flight = asyncio.create_task(batcher.submit(items(1.0), 1, later()))
        await runner.started.wait()
        queued = asyncio.create_task(batcher.submit(items(2.0, 3.0), 2, later()))
        await asyncio.sleep(0)
        abandoned = await batcher.close(0.05)
        outcome = (await asyncio.gather(queued, return_exceptions=True))[0]
        in_flight.cancel()
        return abandoned, outcome

    abandoned, outcome = run(main)
    assert abandoned == 3  # the two queued, and the one in the pass cut short (it gets 503)
    assert depths[-1] == 0  # the queue-depth gauge kept its last value (2) after shutdown
    assert isinstance(outcome, Problem)
    assert (outcome.code, outcome.status) == ("shutting-down", 503)
    assert "retry-after" in outcome.headers


def test_close_does_not_wait_for_a_batch_to_fill() -> None:
    runner = FakeRunner()

    async def main() -> float:
        batcher = make_batcher(runner, max_batch_size=8, max_delay_s=2.0)
        await asyncio.gather(*(batcher.submit(items(1.0), 1, later()) for _ in range(2)))
        queued = asyncio.create_task(batcher.submit(items(1.0), 1, later()))  # waits to fill
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await batcher.close(10)
        closed_after = time.monotonic() - start
        assert (await queued).outputs[0].tolist() == [[2.0]]
        return closed_after

    assert run(main) < 1.0  # the fill wait (2 s) is cut short: dispatched at once
    assert runner.batch_sizes == [2, 1]


def test_close_lets_the_queue_drain_within_its_bound() -> None:
    runner = FakeRunner()

    async def main() -> tuple[int, list[Served]]:
        batcher = make_batcher(runner, max_batch_size=1)
        pending = [
            asyncio.create_task(batcher.submit(items(float(i)), 1, later())) for i in range(3)
        ]
        await asyncio.sleep(0)
        abandoned = await batcher.close(2)
        return abandoned, await asyncio.gather(*pending)

    abandoned, served = run(main)
    assert abandoned == 0
    assert [s.outputs[0].item() for s in served] == [0.0, 2.0, 4.0]


def test_a_closed_batcher_refuses_new_work_with_503() -> None:
    async def main() -> None:
        batcher = make_batcher(FakeRunner())
        await batcher.close(1)
        with pytest.raises(Problem, check=is_problem("shutting-down")):
            await batcher.submit(items(1.0), 1, later())

    run(main)


def test_close_answers_the_in_flight_batch_with_503_when_its_bound_passes() -> None:
    runner = FakeRunner(gate=asyncio.Event())

    async def main() -> tuple[int, BaseException | Served]:
        batcher = make_batcher(runner)
        in_flight = asyncio.create_task(batcher.submit(items(1.0, 2.0), 2, later(3.0)))
        await runner.started.wait()
        abandoned = await batcher.close(0.05)
        done, _ = await asyncio.wait({in_flight}, timeout=1.0)
        if not done:
            in_flight.cancel()
            return abandoned, TimeoutError("the in-flight request was left waiting")
        return abandoned, in_flight.exception() or in_flight.result()

    # Counted: the drain's log said nothing was shed while the running batch's requests got 503.
    abandoned, outcome = run(main)
    assert abandoned == 2
    assert isinstance(outcome, Problem)
    assert outcome.code == "shutting-down"


@pytest.mark.parametrize(
    "options",
    [{"max_batch_size": 0}, {"max_queue_items": 0}, {"max_delay_s": -1.0}],
)
def test_bad_bounds_are_refused(options: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"max_batch_size": 4, "max_delay_s": 0.0, "max_queue_items": 8}
    settings.update(options)
    with pytest.raises(ValueError, match="must be"):
        DynamicBatcher(lambda: None, **settings)


def test_a_queued_request_whose_client_went_away_never_reaches_the_model() -> None:
    runner = FakeRunner(gate=asyncio.Event())
    shed: list[str] = []

    class Observer:
        def queued(self, depth_items: int) -> None: ...

        def admitted(self, change: int) -> None: ...

        def shed(self, reason: str) -> None:
            shed.append(reason)

        def batch_done(self, *args: object, **kwargs: object) -> None: ...

    async def main() -> None:
        batcher = make_batcher(runner, observer=Observer())
        in_flight = asyncio.create_task(batcher.submit(items(1.0), 1, later()))
        await runner.started.wait()  # the model is busy: the next request waits in the queue
        gone: list[Callable[[], None]] = []
        queued = asyncio.create_task(batcher.submit(items(2.0), 1, later(), on_abandon=gone.append))
        await asyncio.sleep(0)
        assert len(gone) == 1
        gone[0]()  # the connection was lost
        with pytest.raises(Problem, check=is_problem("client-closed-request")):
            await queued
        assert runner.gate is not None
        runner.gate.set()
        await in_flight
        await batcher.close(1)

    run(main)
    assert [b[0].ravel().tolist() for b in runner.batches] == [[1.0]]
    assert shed == ["disconnected"]


def test_a_client_gone_while_its_batch_runs_says_nothing_about_the_version() -> None:
    """Rollout health counts a request answered late against the version; one whose client
    left mid-forward is no failure of the version's."""
    runner = FakeRunner(gate=asyncio.Event())
    outcomes: list[tuple[str, bool]] = []

    async def main() -> None:
        batcher = make_batcher(runner)
        batcher.outcome_listener = lambda version, ok, seconds: outcomes.append((version, ok))
        gone: list[Callable[[], None]] = []
        leaving = asyncio.create_task(
            batcher.submit(items(1.0), 1, later(), on_abandon=gone.append)
        )
        staying = asyncio.create_task(batcher.submit(items(2.0), 1, later()))
        await runner.started.wait()  # the leaving one is in the batch now running
        gone[0]()
        assert runner.gate is not None
        runner.gate.set()
        with pytest.raises(Problem, check=is_problem("client-closed-request")):
            await leaving
        await staying
        await batcher.close(1)

    run(main)
    assert outcomes == [("9.9.9", True)]


def test_a_close_waiting_on_a_pass_survives_another_close_cutting_it_short() -> None:
    """The shutdown deadline's close (no wait) cancels the loop while the lifespan's close
    waits for it: the CancelledError of that loop escaped the lifespan's close ("Application
    shutdown failed"), and the hooks and the model release never ran."""
    runner = FakeRunner(gate=asyncio.Event())

    async def main() -> tuple[int, BaseException | Served]:
        batcher = make_batcher(runner)
        request = asyncio.ensure_future(batcher.submit(items(1.0), 1, later()))
        await runner.started.wait()  # in a pass that does not end
        waiting = asyncio.ensure_future(batcher.close(5))
        await asyncio.sleep(0.01)
        await batcher.close(0)  # the deadline: cut short
        abandoned = await waiting  # returns, rather than raise the loop's cancellation
        answer: BaseException | Served = (await asyncio.gather(request, return_exceptions=True))[0]
        return abandoned, answer

    abandoned, answer = run(main)
    assert abandoned == 0
    assert isinstance(answer, Problem) and answer.code == "shutting-down"


def test_a_close_that_is_itself_cancelled_still_raises() -> None:
    runner = FakeRunner(gate=asyncio.Event())

    async def main() -> None:
        batcher = make_batcher(runner)
        request = asyncio.ensure_future(batcher.submit(items(1.0), 1, later()))
        await runner.started.wait()
        waiting = asyncio.ensure_future(batcher.close(5))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await batcher.close(0)
        with pytest.raises(Problem, check=is_problem("shutting-down")):
            await request

    run(main)


def test_close_counts_only_the_running_requests_it_answers_503() -> None:
    """It counted the running pass's items: a request answered 504 while its pass ran was
    counted as answered 503 at shutdown, and of a failed batch re-run in halves only the
    running half was counted, though both halves got 503."""
    held = FakeRunner(gate=asyncio.Event())
    halves = FakeRunner(failures=1, delay_s=1.0)  # the batch of two fails, its halves are slow

    async def expired() -> tuple[int, BaseException | Served]:
        batcher = make_batcher(held)
        late = asyncio.create_task(batcher.submit(items(1.0), 1, time.monotonic() + 0.1))
        await asyncio.sleep(0.3)  # answered 504 while its pass is held
        return await batcher.close(0), (await asyncio.gather(late, return_exceptions=True))[0]

    async def halved() -> tuple[int, list[BaseException | Served]]:
        batcher = make_batcher(halves)
        both = [asyncio.create_task(batcher.submit(items(v), 1, later())) for v in (1.0, 2.0)]
        await asyncio.sleep(1.5)  # the batch failed at 1 s; its first half runs until 2 s
        return await batcher.close(0), await asyncio.gather(*both, return_exceptions=True)

    abandoned, outcome = run(expired)
    assert abandoned == 0 and isinstance(outcome, Problem) and outcome.code == "deadline-exceeded"
    abandoned, outcomes = run(halved)
    assert halves.batch_sizes == [2, 1]
    assert [getattr(o, "code", o) for o in outcomes] == ["shutting-down"] * 2
    assert abandoned == 2


class Recorder(NoObserver):
    """What the batcher reports: sheds, and each pass's (items, seconds, queue waits)."""

    def __init__(self) -> None:
        self.sheds: list[str] = []
        self.passes: list[tuple[int, float, list[float]]] = []

    def shed(self, reason: str) -> None:
        self.sheds.append(reason)

    def batch_done(
        self, runner: Any, items: int, seconds: float, waits: list[float], *rest: object
    ) -> None:
        self.passes.append((items, seconds, waits))


def test_a_deadline_passing_in_the_forward_pass_is_a_504_but_not_a_shed_request() -> None:
    """`frameworm_requests_shed_total` counts requests answered without running the model: one
    whose deadline passed while the model ran on it was counted as shed too."""
    runner = FakeRunner(delay_s=0.3)
    recorder = Recorder()

    async def main() -> None:
        batcher = make_batcher(runner, observer=recorder)
        with pytest.raises(Problem, match="deadline"):
            await batcher.submit(items(1.0), 1, later(0.1))
        await batcher.close(1)

    run(main)
    assert runner.batch_sizes == [1] and recorder.sheds == []
    assert [p[0] for p in recorder.passes] == [1]  # the pass it was in is observed


def test_failed_passes_are_observed_and_each_queue_wait_once() -> None:
    """A failed pass took the model's time too, yet was never observed: a model slow and then
    failing showed in no inference duration or batch size."""
    runner = FakeRunner(poison=9.0, delay_s=0.05)
    recorder = Recorder()

    async def main() -> list[Any]:
        batcher = make_batcher(runner, observer=recorder, max_delay_s=0.05)
        outcomes = await asyncio.gather(
            batcher.submit(items(1.0), 1, later()),
            batcher.submit(items(9.0), 1, later()),
            return_exceptions=True,
        )
        await batcher.close(1)
        return list(outcomes)

    good, bad = run(main)
    assert isinstance(good, Served) and isinstance(bad, Problem)
    assert runner.batch_sizes == [2, 1, 1]  # the pair failed, then each alone
    assert [(items, len(waits)) for items, _, waits in recorder.passes] == [(2, 2), (1, 0), (1, 0)]
    assert all(seconds >= 0.05 for _, seconds, _ in recorder.passes)
