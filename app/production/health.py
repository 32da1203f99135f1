"""Liveness, readiness and startup checks, kept apart, with a report for the probes.

A check is a callable returning a `HealthStatus` or any truthy/falsy value; one that raises is
unhealthy with the exception as its reason. Every entry point bounds every check by
`check_timeout_s`, so a hung dependency makes a probe fail instead of hang; the async ones also
accept coroutine functions. A sync check runs in a daemon thread, at most one run per check at
a time: a probe that finds the last run still going waits for that one, and while a hung run
has not returned, probes report it as timed out (still running) without starting another.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .bounds import check_seconds
from .hooks import Outcome, ThreadCall, call_bounded, is_async_callable

logger = logging.getLogger(__name__)

Category = Literal["liveness", "readiness", "startup"]
CATEGORIES: tuple[Category, ...] = ("liveness", "readiness", "startup")
Check = Callable[[], Any]


@dataclass
class HealthStatus:
    """The outcome of one check."""

    healthy: bool
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # `healthy` may be any value, as a check's result may: a numpy bool is not a bool to
        # json, and a numpy array has no truth value, which made all() raise in the probe.
        # Kept as a real bool; a value with no truth value is unhealthy, as for a raw result.
        healthy, problem = _truth(self.healthy)
        self.healthy = healthy
        if problem:
            self.message = f"healthy is {problem}" + (f" ({self.message})" if self.message else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": _truth(self.healthy)[0],  # a real bool, even if set after construction
            "message": self.message,
            "details": dict(self.details),
            "timestamp": self.timestamp,
        }


def _truth(value: Any) -> tuple[bool, str]:
    """bool(value), or False and why when the value has no truth value (a numpy array)."""
    try:
        return bool(value), ""
    except Exception as exc:
        return False, f"a {type(value).__name__} with no truth value: {exc}"


def _from_result(result: Any) -> HealthStatus:
    if isinstance(result, HealthStatus):
        # Normalised when built; `healthy` set afterwards is normalised again, in a copy.
        return result if type(result.healthy) is bool else replace(result)
    if inspect.isawaitable(result):
        # A coroutine reached the sync API: close it so no "never awaited" warning fires.
        close = getattr(result, "close", None)
        if callable(close):
            close()
        return HealthStatus(False, "async check: use the async API (ais_ready, areport)")
    healthy, problem = _truth(result)
    if problem:  # no truth value (a numpy array, a pandas Series): no verdict
        return HealthStatus(False, f"check returned {problem}")
    return HealthStatus(healthy, "" if healthy else "check returned a falsy value")


def _from_exception(name: str, exc: BaseException) -> HealthStatus:
    logger.warning("health check %r raised %s", name, type(exc).__name__)
    return HealthStatus(False, f"{type(exc).__name__}: {exc}")


def _from_outcome(name: str, result: Any, error: BaseException | None) -> HealthStatus:
    return _from_result(result) if error is None else _from_exception(name, error)


def _timed_out(name: str, timeout_s: float, joined: bool) -> HealthStatus:
    if joined:  # no new run was started: the last one has not returned yet
        logger.warning("health check %r still running from an earlier probe", name)
        return HealthStatus(False, f"timed out after {timeout_s:g}s (still running)")
    logger.warning("health check %r timed out after %.1fs", name, timeout_s)
    return HealthStatus(False, f"timed out after {timeout_s:g}s")


class HealthChecker:
    """Runs the three kinds of probes. Thread-safe.

    `is_ready()` runs the startup checks itself until they first all pass (startup then stays
    complete), and is False while they fail. Results of each category are stored apart, so a
    name used in two categories never shares a result. `startup_timeout` (seconds from
    construction) only marks the report: past it with startup incomplete, `startup_timed_out`
    is True and the orchestrator's startup probe should give up.
    """

    def __init__(self, startup_timeout: float = 60, *, check_timeout_s: float = 5.0) -> None:
        check_seconds(startup_timeout=startup_timeout, check_timeout_s=check_timeout_s)
        self.startup_timeout = float(startup_timeout)
        self.check_timeout_s = float(check_timeout_s)
        self._lock = threading.Lock()
        self._checks: dict[Category, dict[str, Check]] = {c: {} for c in CATEGORIES}
        self._results: dict[Category, dict[str, HealthStatus]] = {c: {} for c in CATEGORIES}
        # The run of each sync check, by (category, name, id(check)), until it returns.
        self._inflight_lock = threading.Lock()
        self._inflight: dict[tuple[Category, str, int], ThreadCall] = {}
        self._async_inflight: dict[tuple[Category, str, int], asyncio.Task[Outcome]] = {}
        self._created = time.monotonic()
        self._startup_complete = False

    # -- registration -------------------------------------------------------------------
    def add_check(self, category: Category, name: str, fn: Check) -> None:
        if category not in self._checks:
            raise ValueError(f"unknown check category {category!r}")
        if not callable(fn):
            raise TypeError("a health check must be callable")
        with self._lock:
            self._checks[category][name] = fn
            self._results[category].pop(name, None)

    def add_liveness_check(self, name: str, fn: Check) -> None:
        self.add_check("liveness", name, fn)

    def add_readiness_check(self, name: str, fn: Check) -> None:
        self.add_check("readiness", name, fn)

    def add_startup_check(self, name: str, fn: Check) -> None:
        self.add_check("startup", name, fn)

    # -- sync API -----------------------------------------------------------------------
    def is_alive(self) -> bool:
        return self._run_category("liveness")

    def check_startup(self) -> bool:
        """Run the startup checks (once they have all passed, they are not run again)."""
        if self.startup_complete:
            return True
        return self._record_startup(self._run_category("startup"))

    def is_ready(self) -> bool:
        if not self.check_startup():
            return False
        return self._run_category("readiness")

    def get_health_report(self) -> dict[str, Any]:
        alive = self.is_alive()
        ready = self.is_ready()
        return self._report(alive, ready)

    # -- async API (for the server's probes) --------------------------------------------
    async def ais_alive(self) -> bool:
        return await self._arun_category("liveness")

    async def acheck_startup(self) -> bool:
        if self.startup_complete:
            return True
        return self._record_startup(await self._arun_category("startup"))

    async def ais_ready(self) -> bool:
        if not await self.acheck_startup():
            return False
        return await self._arun_category("readiness")

    async def areport(self) -> dict[str, Any]:
        """Like `get_health_report`, with every check bounded by `check_timeout_s`."""
        alive = await self.ais_alive()
        ready = await self.ais_ready()
        return self._report(alive, ready)

    # -- state --------------------------------------------------------------------------
    @property
    def startup_complete(self) -> bool:
        with self._lock:
            return self._startup_complete

    @property
    def startup_timed_out(self) -> bool:
        elapsed = time.monotonic() - self._created
        return not self.startup_complete and elapsed > self.startup_timeout

    def results(self, category: Category) -> dict[str, HealthStatus]:
        """The latest result of each check of one category."""
        with self._lock:
            return dict(self._results[category])

    # -- internals ----------------------------------------------------------------------
    def _snapshot(self, category: Category) -> list[tuple[str, Check]]:
        # Copy under the lock, run outside it: checks may be slow or re-enter the checker.
        with self._lock:
            return list(self._checks[category].items())

    def _store(self, category: Category, results: Mapping[str, HealthStatus]) -> bool:
        with self._lock:
            self._results[category].update(results)
        return all(status.healthy for status in results.values())

    def _thread_call(self, category: Category, name: str, check: Check) -> tuple[ThreadCall, bool]:
        """The run of a sync check in flight, or a new one: (the run, whether it was in flight).

        A hung sync check cannot be stopped, only abandoned; starting it again on every probe
        would leak one thread per probe. So a check has at most one run at a time, and a probe
        that finds one waits for it (within its own bound) instead of starting another.
        Raises RuntimeError when no thread can be started.
        """
        key = (category, name, id(check))  # the id is stable: the running thread holds `check`
        with self._inflight_lock:
            running = self._inflight.get(key)
            if running is not None:
                return running, True

            def run() -> Any:
                try:
                    return check()
                finally:
                    # Waits for the insertion below, so it always removes its own run.
                    with self._inflight_lock:
                        del self._inflight[key]

            call = ThreadCall(run)
            self._inflight[key] = call
            return call, False

    def _run_category(self, category: Category) -> bool:
        # Start every check, then wait for them all against one deadline: a probe takes at
        # most check_timeout_s however many checks hang, as on the async path.
        timeout_s = self.check_timeout_s
        deadline = time.monotonic() + timeout_s
        started: list[tuple[str, tuple[ThreadCall, bool] | HealthStatus]] = []
        for name, fn in self._snapshot(category):
            try:
                started.append((name, self._thread_call(category, name, fn)))
            except RuntimeError as exc:  # can't start new thread
                started.append((name, _from_exception(name, exc)))
        results: dict[str, HealthStatus] = {}
        for name, run in started:
            if isinstance(run, HealthStatus):
                results[name] = run
                continue
            call, joined = run
            outcome = call.wait(max(0.0, deadline - time.monotonic()))
            if outcome is None:
                results[name] = _timed_out(name, timeout_s, joined)
            else:
                results[name] = _from_outcome(name, *outcome)
        return self._store(category, results)

    def _async_call(
        self, category: Category, name: str, check: Check
    ) -> tuple[asyncio.Task[Outcome], bool]:
        """As `_thread_call`, for a coroutine check: its run in flight on this loop, or a new
        one. A run past its bound is left running, not cancelled and started again: what it
        awaits may be a thread (`asyncio.to_thread`) that no cancellation stops, and a probe
        per second took every thread of the loop's default executor."""
        key = (category, name, id(check))
        loop = asyncio.get_running_loop()
        with self._inflight_lock:
            running = self._async_inflight.get(key)
            if running is not None and not running.done() and running.get_loop() is loop:
                return running, True
            task = self._async_inflight[key] = loop.create_task(_awaited_outcome(check))
        task.add_done_callback(lambda done: self._forget_async(key, done))
        return task, False

    def _forget_async(self, key: tuple[Category, str, int], task: asyncio.Task[Outcome]) -> None:
        with self._inflight_lock:  # its own run only: a later one may have taken the key
            if self._async_inflight.get(key) is task:
                del self._async_inflight[key]

    async def _run_async(self, category: Category, name: str, check: Check) -> HealthStatus:
        timeout_s = self.check_timeout_s
        joined = False
        try:
            if is_async_callable(check):
                task, joined = self._async_call(category, name, check)
                done, _ = await asyncio.wait({task}, timeout=timeout_s)  # never cancels it
                if not done:
                    raise TimeoutError
                result, error = task.result()
                return _from_outcome(name, result, error)
            else:
                # Sync checks may block; keep them off the loop, in a thread that can be
                # abandoned, and never more than one per check (see _thread_call).
                call, joined = self._thread_call(category, name, check)
                pending = call_bounded(call, timeout_s)
            # call_bounded returns what the check raised, BaseExceptions included: a probe
            # answers with a status instead of raising; only our own cancellation propagates.
            result, error = await pending
        except TimeoutError:
            return _timed_out(name, timeout_s, joined)
        except RuntimeError as exc:  # can't start new thread
            return _from_exception(name, exc)
        return _from_outcome(name, result, error)

    async def _arun_category(self, category: Category) -> bool:
        checks = self._snapshot(category)
        statuses = await asyncio.gather(
            *(self._run_async(category, name, fn) for name, fn in checks)
        )
        return self._store(
            category, {name: s for (name, _), s in zip(checks, statuses, strict=True)}
        )

    def _record_startup(self, passed: bool) -> bool:
        if passed:
            with self._lock:
                if not self._startup_complete:
                    logger.info("startup checks passed")
                self._startup_complete = True
        return passed

    def _report(self, alive: bool, ready: bool) -> dict[str, Any]:
        with self._lock:
            per_category: dict[str, Any] = {
                category: {name: status.to_dict() for name, status in results.items()}
                for category, results in self._results.items()
            }
            startup_complete = self._startup_complete
        timed_out = not startup_complete and time.monotonic() - self._created > self.startup_timeout
        report: dict[str, Any] = {
            "alive": alive,
            "ready": ready,
            "startup_complete": startup_complete,
            "startup_timed_out": timed_out,
            "timestamp": time.time(),
        }
        report.update(per_category)
        return report


async def _awaited_outcome(check: Check) -> Outcome:
    """What a coroutine check returned or raised (anything: a probe reports, never raises)."""
    try:
        return await check(), None
    except BaseException as exc:
        return None, exc
