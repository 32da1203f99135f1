"""DynamicBatcher's admission control: what it expects a request to wait, and whom it turns away."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.errors import Problem
from app.inference.observer import NoObserver
from app.inference.pending import Served
from tests.unit.app.inference.batcher_support import (
    FakeRunner,
    holding,
    items,
    later,
    make_batcher,
    run,
)


def test_admission_control_sheds_when_the_expected_wait_outlasts_the_deadline() -> None:
    runner = FakeRunner(gate=asyncio.Event())

    async def main() -> Problem:
        batcher = make_batcher(runner)
        async with holding(batcher, runner):
            runner.batch_seconds = 2.0  # the warm-up says a batch takes ~2 s; none finished yet
            with pytest.raises(Problem) as caught:
                await batcher.submit(items(2.0), 1, later(0.5))
            served = asyncio.create_task(batcher.submit(items(3.0), 1, later(6.0)))
            await asyncio.sleep(0)
        await served  # a request with time to wait is admitted
        return caught.value

    problem = run(main)
    assert (problem.code, problem.status) == ("overloaded", 503)
    assert "expected wait" in problem.detail
    # The batch in flight, then its own: about 4 s until it could be answered.
    assert problem.headers["retry-after"] == "4"


def refused_behind(
    runner: FakeRunner, ahead: int, behind: int, deadline_s: float, running_s: float = 0.0
) -> Problem:
    """The Problem a request of `behind` items gets, submitted `running_s` into a pass of
    `ahead` items held on the runner's gate (batches of 4); fails if it is admitted."""

    async def main() -> Problem:
        batcher = make_batcher(runner, max_batch_size=4, max_queue_items=64)
        async with holding(batcher, runner, ahead):
            await asyncio.sleep(running_s)
            with pytest.raises(Problem) as caught:
                arrays = [np.zeros((behind, 1), np.float32)]
                await batcher.submit(arrays, behind, later(deadline_s))
        return caught.value

    problem = run(main)
    assert runner.batch_sizes == [ahead]  # the refused one never reached the model
    return problem


def test_admission_plans_with_a_running_pass_that_outran_the_estimate() -> None:
    """The warm-up said 10 ms a batch; the machine then turned slower. While a pass runs past
    that, it is the better estimate: a request that would wait behind it is refused at once
    rather than admitted to miss its deadline in the queue."""
    runner = FakeRunner(gate=asyncio.Event(), batch_seconds=0.01)
    # Running 0.3 s: this pass and the next take >= 0.6 s.
    problem = refused_behind(runner, ahead=1, behind=1, deadline_s=0.5, running_s=0.3)
    assert (problem.code, problem.status) == ("overloaded", 503)


def test_a_running_pass_larger_than_a_batch_counts_as_the_batches_it_holds() -> None:
    runner = FakeRunner(gate=asyncio.Event(), batch_seconds=0.01)

    async def main() -> tuple[float, float]:
        batcher = make_batcher(runner, max_batch_size=4)
        async with holding(batcher, runner, 12):
            await asyncio.sleep(0.3)  # three batches' worth: about 0.1 s each
            return batcher.expected_wait_s(), batcher.expected_wait_s(items=8)

    one, eight = run(main)
    # The pass in flight (three batches of about 0.1 s), then the request's own: one batch,
    # or two for 8 items. Slack above for a late wake-up.
    assert 0.4 <= one < 0.6
    assert 0.5 <= eight < 0.75


@pytest.mark.parametrize("ahead, behind", [(40, 1), (1, 40)])
def test_a_request_behind_or_itself_larger_than_a_batch_is_refused_at_once(
    ahead: int, behind: int
) -> None:
    """Both passes counted as one batch whatever their items: a request behind 40 items, or of
    40 items itself, was admitted, waited out its deadline and got 504 (the model still ran
    the 40 for nothing)."""
    runner = FakeRunner(gate=asyncio.Event(), batch_seconds=0.05)  # a batch of 4: 50 ms
    problem = refused_behind(runner, ahead, behind, deadline_s=0.3)
    assert (problem.code, problem.status) == ("overloaded", 503)


def test_admission_answers_a_client_chosen_deadline_it_cannot_meet_504_not_503() -> None:
    """A v2 `timeout` shorter than the server's is the client's choice, not an overload: 504,
    as when it passes in the queue, which the v2 route counts under client_deadline (left out
    of the error-rate alert). A 503 would count as a server fault."""
    runner = FakeRunner(gate=asyncio.Event())
    shed: list[str] = []

    class Observer(NoObserver):
        def shed(self, reason: str) -> None:
            shed.append(reason)

    async def main() -> list[Problem]:
        batcher = make_batcher(runner, observer=Observer())
        caught = []
        async with holding(batcher, runner):
            runner.batch_seconds = 2.0  # about 4 s until a request queued now is answered
            for client_deadline in (True, False):
                with pytest.raises(Problem) as problem:
                    await batcher.submit(items(2.0), 1, later(0.5), client_deadline=client_deadline)
                caught.append(problem.value)
        return caught

    client, server = run(main)
    assert (client.code, client.status) == ("deadline-exceeded", 504)
    assert "retry-after" not in client.headers  # the same timeout would miss again
    assert (server.code, server.status) == ("overloaded", 503)  # a server-chosen deadline
    assert shed == ["deadline", "admission"]
    assert runner.batch_sizes == [1]  # neither reached the model


def test_an_idle_server_admits_a_request_however_slow_its_last_batches_were() -> None:
    # One slow batch must not lock a short deadline out for good: with nothing queued or
    # running there is nothing to wait behind, and only a batch that runs refreshes the timing.
    runner = FakeRunner()

    async def main() -> list[Served]:
        batcher = make_batcher(runner)
        runner.batch_seconds = 2.0  # a slow warm-up, and no live batch timed yet
        first = await batcher.submit(items(1.0), 1, later(0.5))
        batcher._recent_batches.append(2.0)  # a stall: the slowest recent batch took 2 s
        second = await batcher.submit(items(2.0), 1, later(0.5))
        await batcher.close(1)
        return [first, second]

    served = run(main)
    assert [float(s.outputs[0][0, 0]) for s in served] == [2.0, 4.0]


def test_a_request_larger_than_a_batch_counts_as_its_share_of_a_batch_s_time() -> None:
    """It runs alone, 30 batches' worth at once: taken as one batch's time, it made admission
    expect every batch to take that long, and shed ordinary requests 503 for 16 batches."""
    runner = FakeRunner(delay_s=0.3)

    async def main() -> float:
        batcher = make_batcher(runner, max_batch_size=4)
        await batcher.submit([np.zeros((12, 1), dtype=np.float32)], 12, later())
        await batcher.close(1)
        return batcher.batch_seconds

    assert 0.3 / 3 <= run(main) < 0.3  # a third of the pass: 12 items are 3 batches of 4
