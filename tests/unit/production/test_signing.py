"""RequestSigner: HMAC over timestamp and body, fresh, accepted once."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time

import pytest

from app.production import RequestSigner

KEY = "k" * 32


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1_700_000_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    return now


def test_a_signature_is_the_hmac_of_timestamp_and_body() -> None:
    signature = RequestSigner(KEY).sign(b'{"x": 1}', timestamp=1700000000)
    expected = hmac.new(KEY.encode(), b'1700000000.{"x": 1}', hashlib.sha256).hexdigest()
    assert signature == f"1700000000.{expected}"


def test_a_fresh_signature_verifies_for_bytes_and_text_bodies() -> None:
    signer = RequestSigner(KEY)
    assert signer.verify(b"body", signer.sign("body"))
    assert signer.verify("other body", signer.sign(b"other body"))


def test_a_replayed_signature_is_refused() -> None:
    signer = RequestSigner(KEY)
    signature = signer.sign(b"pay 10")
    assert signer.verify(b"pay 10", signature) is True
    assert signer.verify(b"pay 10", signature) is False


def test_a_changed_body_or_another_key_is_refused() -> None:
    signer = RequestSigner(KEY)
    assert not signer.verify(b"pay 11", signer.sign(b"pay 10"))
    assert not RequestSigner("x" * 32).verify(b"pay 10", signer.sign(b"pay 10"))


def test_old_and_far_future_timestamps_are_refused(clock: list[float]) -> None:
    signer = RequestSigner(KEY, max_timestamp_age=300, max_clock_skew=30)
    now = int(clock[0])
    assert not signer.verify(b"b", signer.sign(b"b", timestamp=now - 301))
    assert not signer.verify(b"b", signer.sign(b"b", timestamp=now + 31))
    assert signer.verify(b"b", signer.sign(b"b", timestamp=now + 30))
    assert signer.verify(b"b", signer.sign(b"b", timestamp=now - 300))


def test_another_spelling_of_a_used_signature_does_not_replay_it(clock: list[float]) -> None:
    signer = RequestSigner(KEY)
    signature = signer.sign(b"pay 10", timestamp=1700000000)
    mac = signature.split(".")[1]
    assert signer.verify(b"pay 10", signature) is True
    # int() reads each of these as the same timestamp, so their MAC matches too.
    for other in ("0" + signature, "00" + signature, f"1\u066700000000.{mac}"):
        assert signer.verify(b"pay 10", other) is False
    assert len(signer) == 1


@pytest.mark.parametrize(
    "signature",
    [None, "", "abc", "1700000000", "1700000000." + "A" * 64, "x.1234", 12345],
)
def test_malformed_signatures_are_refused_without_raising(signature: object) -> None:
    assert RequestSigner(KEY).verify(b"b", signature) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [None, 5, 10**12, {"a": 1}, [1, 2]])
def test_data_that_is_not_bytes_or_text_is_refused_not_coerced(data: object) -> None:
    """bytes(5) is five NUL bytes (so 5 signed like them) and bytes(10**12) a terabyte."""
    signer = RequestSigner(KEY)
    with pytest.raises(TypeError, match="bytes or str"):
        signer.sign(data)  # type: ignore[arg-type]
    assert signer.verify(data, signer.sign(b"\0" * 5)) is False  # type: ignore[arg-type]
    assert signer.verify(memoryview(b"body"), signer.sign(b"body"))


def test_remembered_signatures_are_forgotten_once_their_window_has_passed(
    clock: list[float],
) -> None:
    signer = RequestSigner(KEY, max_timestamp_age=60)
    for i in range(10):
        assert signer.verify(str(i), signer.sign(str(i)))
    assert len(signer) == 10
    clock[0] += 61
    assert signer.verify(b"new", signer.sign(b"new"))
    assert len(signer) == 1


def test_a_full_replay_cache_refuses_rather_than_forgets_live_entries(clock: list[float]) -> None:
    signer = RequestSigner(KEY, max_timestamp_age=60, max_entries=2)
    assert signer.verify(b"1", signer.sign(b"1"))
    assert signer.verify(b"2", signer.sign(b"2"))
    assert not signer.verify(b"3", signer.sign(b"3"))
    clock[0] += 61
    assert signer.verify(b"3", signer.sign(b"3"))


def test_one_signature_verified_by_many_threads_at_once_is_accepted_once() -> None:
    signer = RequestSigner(KEY)
    signature = signer.sign(b"once")
    barrier = threading.Barrier(16)
    results: list[bool] = []

    def worker() -> None:
        barrier.wait()
        results.append(signer.verify(b"once", signature))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]


def test_weak_secrets_and_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        RequestSigner("short")
    with pytest.raises(ValueError):
        RequestSigner(KEY, max_timestamp_age=0)
