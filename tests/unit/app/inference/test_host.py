"""ModelHost.prepare_async: a load that shutdown can abandon, and what it leaves behind."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from app.config import Settings
from app.inference.host import ModelHost


class Released:
    """Stands in for the runner a load produces; records that it was closed."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelHost:
    monkeypatch.setattr("app.inference.host.ModelRunner", Released)  # what _release checks
    return ModelHost(Settings(_env_file=None, registry=str(tmp_path), retain_freed_memory=False))


def test_a_cancelled_load_does_not_hold_up_the_loop_closing_and_its_runner_is_released(
    host: ModelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    may_finish = threading.Event()
    made = Released()

    def slow_prepare(manifest: object = None) -> Released:
        may_finish.wait(10)  # a long load: a large artefact, a slow registry
        return made

    monkeypatch.setattr(host, "prepare", slow_prepare)

    async def main() -> None:
        loading = asyncio.create_task(host.prepare_async())
        await asyncio.sleep(0.05)
        loading.cancel()  # SIGTERM: the lifespan cancels the load
        with pytest.raises(asyncio.CancelledError):
            await loading

    started = time.monotonic()
    asyncio.run(main())  # joins the default executor's threads: the load must not be there
    assert time.monotonic() - started < 5
    may_finish.set()
    assert made.closed.wait(5)  # finished after nobody wanted it: released, not leaked


def test_a_load_hands_its_runner_or_its_error_to_the_awaiting_task(
    host: ModelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = Released()
    outcomes: list[object] = [made, ValueError("bad artefact")]

    def prepare(manifest: object = None) -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(host, "prepare", prepare)

    async def main() -> object:
        runner: object = await host.prepare_async()
        with pytest.raises(ValueError, match="bad artefact"):
            await host.prepare_async()
        return runner

    assert asyncio.run(main()) is made
    assert not made.closed.is_set()


def test_a_load_failing_with_an_unexpected_error_fails_the_host_and_logs_the_traceback(
    host: ModelHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A user's model may raise anything while it warms up (a TypeError, say): the host must
    end "failed" (the server exits 3), not sit "loading" for ever with nothing logged."""

    def prepare(manifest: object = None) -> object:
        raise TypeError("Got unsupported ScalarType BFloat16")

    monkeypatch.setattr(host, "prepare", prepare)
    monkeypatch.setattr(host, "settings", host.settings.model_copy(update={"load_retries": 1}))
    asyncio.run(host.start())
    assert host.state == "failed" and host.failed.is_set()
    # The reason is public (/readyz?verbose): the exception's type, its text in the log only.
    assert host.reason == "loading failed (attempt 1 of 1): TypeError (details in the server log)"
    (record,) = [r for r in caplog.records if r.name == "frameworm.model"]
    assert "unsupported ScalarType" in record.getMessage()
    assert record.exc_info is not None  # the traceback is in the log, for whoever debugs it


def test_thousands_of_load_retries_back_off_without_overflowing(
    host: ModelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backoff computed 2.0 ** (attempt - 1) before capping it: attempt 1,025 raised
    OverflowError out of start(), which never raises, and the host sat "loading" for ever."""
    waits: list[float] = []

    def prepare(manifest: object = None) -> object:
        raise TypeError("still broken")

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(host, "prepare", prepare)
    monkeypatch.setattr(host, "settings", host.settings.model_copy(update={"load_retries": 1100}))
    monkeypatch.setattr("app.inference.host.asyncio.sleep", no_wait)
    asyncio.run(host.start())
    assert host.state == "failed" and host.failed.is_set()
    assert len(waits) == 1099 and max(waits) == 10.0
