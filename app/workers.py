"""`frameworm serve --workers N`: N worker processes accepting on one socket, one supervisor.

A signal sent to the whole process group (a terminal's Ctrl-C, systemd's control-group kill)
reaches each worker directly and again forwarded by the supervisor, in either order. So the
supervisor speaks for the group: it forwards the first signal it gets (SIGINT, SIGTERM or
SIGQUIT) to each worker as SIGTERM (drain) and any later one as SIGQUIT (exit at once); a worker
ignores SIGINT, and a repeated SIGTERM while it drains. A worker started after the first signal
(it came while the workers were being started) is sent SIGTERM as it starts, and no worker is
started after that. A worker that exits on its own stops the others with SIGTERM too, and its
exit code is the server's; it is not a signal of the supervisor's, whose first is still a drain.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess
from types import FrameType

import typer
from prometheus_client import multiprocess as prometheus_multiprocess

from app.cli.output import errors_as_one_line
from app.config import Settings
from app.telemetry.logs import configure_logging

log = logging.getLogger("frameworm.serve")

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# What a worker answers (app.serve): SIGTERM drains, SIGQUIT exits at once. Never SIGINT, which
# a terminal's Ctrl-C sends each worker directly too.
WORKER_EXIT_NOW = signal.SIGQUIT
WORKER_SIGNALS = (signal.SIGTERM, WORKER_EXIT_NOW)
# One server process on an inherited socket: app.serve.serve_one, handed in (it imports this).
ServeOne = Callable[..., int]


def supervise(settings: Settings, sock: socket.socket, serve_one: ServeOne) -> int:
    """N worker processes accepting on one socket, each draining on its own.

    Metrics use prometheus_client's multiprocess mode in a fresh directory (set before the
    workers start: the mode is chosen when prometheus_client is imported). When one worker
    exits, the others are drained too and the supervisor exits with the worst code, so that
    Kubernetes restarts the pod rather than serve on with fewer workers than asked for.
    """
    metrics_dir = tempfile.mkdtemp(prefix="frameworm-metrics-")
    inherited = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    supervisor = Supervisor(settings, sock, serve_one)
    previous = {sig: signal.signal(sig, supervisor.forward) for sig in supervisor.SIGNALS}
    try:
        supervisor.start()
        # Each worker was handed its own copy of the socket at spawn. Ours would keep the port
        # accepting into the backlog after every worker has closed its listener in the drain:
        # new connections would hang, then be reset, instead of being refused at once.
        sock.close()
        log.info(
            "started %d workers on %s:%d", len(supervisor.started), settings.host, settings.port
        )
        supervisor.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for worker in supervisor.started:
            if worker.pid is not None:
                prometheus_multiprocess.mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call]
        shutil.rmtree(metrics_dir, ignore_errors=True)
        # The directory is gone: this process (a test's, say) must not point at it any longer.
        if inherited is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = inherited
    return supervisor.exit_code()


class Supervisor:
    """The workers, and the signals the supervisor forwards to them (`forward` is its handler)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, WORKER_EXIT_NOW)
    # How a worker the supervisor stopped may end: its drain's 0, or killed before its handlers
    # were in, by the supervisor's signal or the group's Ctrl-C.
    STOPPED = (0, -signal.SIGTERM, -WORKER_EXIT_NOW, -signal.SIGINT)

    def __init__(self, settings: Settings, sock: socket.socket, serve_one: ServeOne) -> None:
        context = multiprocessing.get_context("spawn")
        self.workers: list[BaseProcess] = [
            context.Process(
                target=_worker,
                args=(serve_one, settings, sock, os.getpid()),
                name=f"frameworm-worker-{i}",
            )
            for i in range(settings.workers)
        ]
        self.started: list[BaseProcess] = []
        self.stopping = threading.Event()
        self.signals = 0  # the supervisor's own: from the second on, workers exit at once
        self.unasked: BaseProcess | None = None  # the worker whose own exit stopped the rest
        self._told: set[int] = set()  # sent SIGTERM: draining (or, still starting, dead of it)

    def start(self) -> None:
        # Spawning starts multiprocessing's resource tracker first, once, and that unblocks
        # SIGINT on this thread (bpo-33613: the tracker is protected by the same mask as the
        # workers below). Started now, it cannot undo the workers' mask.
        resource_tracker.ensure_running()
        for worker in self.workers:
            if self.stopping.is_set():
                return  # stopped while starting: the rest never start
            # The group's Ctrl-C reaches a worker too, and one arriving while its interpreter
            # starts (before `_worker` ignores SIGINT) crashed it there. Blocked on this thread
            # across the spawn, SIGINT starts blocked in the worker, which ignores it before
            # unblocking. Here it is not lost: another thread, or this one after, takes it.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                worker.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            self.started.append(worker)
            if self.stopping.is_set():
                self._tell(worker)  # the signal came before it had a pid

    def forward(self, sig: int, frame: FrameType | None) -> None:
        """The supervisor's handler, for each of SIGNALS alike (Ctrl-\\ too: its clean-up runs)."""
        self.stopping.set()
        self.signals += 1
        for worker in self.workers:
            self._tell(worker, exit_now=self.signals > 1)

    def wait(self) -> None:
        """Until every worker has exited; the first to exit unasked stops the others."""
        while any(w.is_alive() for w in self.started):
            for worker in self.started:
                worker.join(0.2)
                if not worker.is_alive() and not self.stopping.is_set():
                    log.error(
                        "worker %s exited with %s; stopping the others",
                        worker.name,
                        worker.exitcode,
                    )
                    # Not a signal of the supervisor's: its first one is still a drain.
                    self.unasked = worker
                    self.stopping.set()
                    for other in self.workers:
                        self._tell(other)

    def exit_code(self) -> int:
        """The worst worker's; a worker the supervisor stopped counts as 0 when it drained, or
        died of a signal before it could (still starting: no handlers yet, no drain to run)."""

        def code(worker: BaseProcess) -> int:
            exitcode = worker.exitcode or 0
            stopped = self.stopping.is_set() and worker is not self.unasked
            return 0 if stopped and exitcode in self.STOPPED else abs(exitcode)

        return max(map(code, self.started), default=0)

    def _tell(self, worker: BaseProcess, *, exit_now: bool = False) -> None:
        """SIGTERM first, whatever came (a worker still starting ignores SIGQUIT, and dies of
        SIGTERM); SIGQUIT to one draining already when `exit_now`."""
        pid = worker.pid
        if pid is None or not worker.is_alive():
            return
        if pid not in self._told:
            self._told.add(pid)
            os.kill(pid, signal.SIGTERM)
        elif exit_now:
            os.kill(pid, WORKER_EXIT_NOW)


def _worker(serve_one: ServeOne, settings: Settings, sock: socket.socket, supervisor: int) -> None:
    # The group's Ctrl-C is the supervisor's to answer. Until the server's own handlers are in,
    # a SIGQUIT would dump core: the supervisor sends it only after SIGTERM, which ends a
    # worker still starting.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C pending since the spawn is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(WORKER_EXIT_NOW, signal.SIG_IGN)
    _drain_when_orphaned(supervisor)
    configure_logging(settings.log_format, settings.log_level)
    # What stops a worker from building its app is one line, as with a single process (the
    # supervisor's own checks catch most of it before any worker starts).
    try:
        with errors_as_one_line():
            sys.exit(serve_one(settings, sock, worker=True))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


def _drain_when_orphaned(supervisor: int) -> None:
    """SIGTERM this worker when its supervisor dies (a SIGKILL included): never serve orphaned."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the supervisor's job alone
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
