"""What the `--workers` supervisor (app/workers.py) sends its workers, and the code it exits with.

The workers here are stand-ins that exit as told; tests/e2e/test_workers.py runs real ones.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from app.config import Settings
from app.workers import Supervisor


@dataclass
class Worker:
    """What the supervisor reads of a worker process."""

    pid: int
    exitcode: int | None = None
    at_sigterm: int | None = None  # the code it exits with once sent SIGTERM; None: draining
    on_join: Callable[[], None] | None = None  # what happens while the supervisor waits on it

    @property
    def name(self) -> str:
        return f"worker-{self.pid}"

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self.on_join is not None:
            self.on_join()


@dataclass
class Run:
    supervisor: Supervisor
    workers: list[Worker]
    sent: list[tuple[int, int]]  # (pid, signal), in order


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    workers = [Worker(101), Worker(102)]
    sent: list[tuple[int, int]] = []

    def kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        worker = next(w for w in workers if w.pid == pid)
        if sig == signal.SIGTERM and worker.at_sigterm is not None:
            worker.exitcode = worker.at_sigterm

    monkeypatch.setattr("app.workers.os.kill", kill)
    settings = Settings(_env_file=None, env="development", workers=len(workers))
    with socket.socket() as sock:
        supervisor = Supervisor(settings, sock, lambda *args, **kwargs: 0)
        supervisor.workers = supervisor.started = workers  # type: ignore[assignment]
        yield Run(supervisor, workers, sent)


def test_the_first_signal_drains_each_worker_and_the_second_exits_at_once(run: Run) -> None:
    run.supervisor.forward(signal.SIGINT, None)
    assert run.sent == [(101, signal.SIGTERM), (102, signal.SIGTERM)]
    run.supervisor.forward(signal.SIGTERM, None)
    assert run.sent[2:] == [(101, signal.SIGQUIT), (102, signal.SIGQUIT)]


def test_sigquit_to_the_supervisor_is_a_signal_like_the_others(run: Run) -> None:
    """Ctrl-\\ killed the supervisor (its default action): no clean-up, its metrics directory
    left behind. A worker still starting ignores SIGQUIT: SIGTERM comes first."""
    assert signal.SIGQUIT in run.supervisor.SIGNALS
    run.supervisor.forward(signal.SIGQUIT, None)
    assert run.sent == [(101, signal.SIGTERM), (102, signal.SIGTERM)]


def test_after_a_worker_stopped_the_others_the_first_signal_is_still_a_drain(run: Run) -> None:
    """The stop a worker's own exit began counted as the supervisor's first signal: the
    operator's first SIGTERM then forced the other workers' exit, skipping their drain."""
    dead, draining = run.workers
    dead.exitcode = 1
    operator = iter([signal.SIGTERM, signal.SIGTERM])

    def operator_signals_while_it_drains() -> None:
        if (draining.pid, signal.SIGTERM) in run.sent:
            sig = next(operator, None)
            if sig is None:
                draining.exitcode = 0  # drained
            else:
                run.supervisor.forward(sig, None)

    draining.on_join = operator_signals_while_it_drains
    run.supervisor.wait()
    # Stopped by the supervisor; the operator's first SIGTERM changes nothing, the second
    # is "exit at once".
    assert run.sent == [(102, signal.SIGTERM), (102, signal.SIGQUIT)]
    assert run.supervisor.exit_code() == 1  # the worker that exited on its own


@pytest.mark.parametrize("code", [-signal.SIGTERM, -signal.SIGQUIT, -signal.SIGINT, 0])
def test_workers_stopped_by_a_signal_exit_the_server_0(run: Run, code: int) -> None:
    """Killed by the signal before their handlers were in (still starting), or drained."""
    for worker in run.workers:
        worker.at_sigterm = code
    run.supervisor.forward(signal.SIGINT, None)
    run.supervisor.wait()
    assert run.supervisor.exit_code() == 0


def test_a_worker_killed_by_sigterm_on_its_own_is_reported_not_taken_for_a_stop(
    run: Run,
) -> None:
    """Its -15 counted as a clean stop once the others were stopping: the server exited 0,
    and systemd's Restart=on-failure did not restart it."""
    dead, other = run.workers
    dead.exitcode = -signal.SIGTERM
    other.at_sigterm = -signal.SIGTERM  # still starting when stopped
    run.supervisor.wait()
    assert run.sent == [(102, signal.SIGTERM)]
    assert run.supervisor.exit_code() == signal.SIGTERM
