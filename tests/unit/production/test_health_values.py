"""HealthStatus and HealthChecker with values that are not plain bools (numpy's, above all)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from app.production import HealthChecker, HealthStatus


class NoTruthValue:
    """Like a numpy array of several elements: `bool()` of it raises."""

    def __bool__(self) -> bool:
        raise ValueError("The truth value of an array with more than one element is ambiguous")


def test_a_check_result_without_a_truth_value_is_unhealthy_not_an_error() -> None:
    health = HealthChecker(check_timeout_s=2)
    health.add_readiness_check("array", NoTruthValue)
    health.add_readiness_check("fine", lambda: True)
    assert health.is_ready() is False
    status = health.results("readiness")["array"]
    assert not status.healthy
    assert status.message.startswith("check returned a NoTruthValue with no truth value")
    assert health.results("readiness")["fine"].healthy
    assert asyncio.run(health.ais_ready()) is False
    assert health.get_health_report()["ready"] is False


def test_a_numpy_array_result_is_unhealthy() -> None:
    health = HealthChecker(check_timeout_s=2)
    health.add_readiness_check("array", lambda: np.array([1, 1]))
    assert health.is_ready() is False
    assert asyncio.run(health.ais_ready()) is False


@pytest.mark.parametrize(
    "probe",
    [
        lambda h: h.is_alive(),
        lambda h: h.get_health_report()["alive"],
        lambda h: asyncio.run(h.ais_alive()),
        lambda h: asyncio.run(h.areport())["alive"],
    ],
)
def test_a_status_whose_healthy_has_no_truth_value_is_unhealthy_not_an_error(
    probe: Callable[[HealthChecker], Any],
) -> None:
    # all(status.healthy ...) raised "truth value of an array is ambiguous" in the probe.
    health = HealthChecker(check_timeout_s=2)
    health.add_liveness_check("array", lambda: HealthStatus(np.array([True, False]), "db"))  # type: ignore[arg-type]
    health.add_liveness_check("fine", lambda: HealthStatus(True))
    assert probe(health) is False
    status = health.results("liveness")["array"]
    assert status.healthy is False
    assert status.message.startswith("healthy is a ndarray with no truth value")
    assert status.message.endswith("(db)")  # the check's own message is kept
    assert health.results("liveness")["fine"].healthy is True


def test_a_status_keeps_healthy_as_a_real_bool() -> None:
    assert HealthStatus(np.bool_(True)).healthy is True  # type: ignore[arg-type]
    assert HealthStatus(np.bool_(False)).healthy is False  # type: ignore[arg-type]
    assert HealthStatus(1).healthy is True  # type: ignore[arg-type]
    unhealthy = HealthStatus(NoTruthValue(), "down")  # type: ignore[arg-type]
    assert unhealthy.healthy is False
    assert unhealthy.message.startswith("healthy is a NoTruthValue with no truth value")


def test_a_report_of_numpy_bool_statuses_is_json() -> None:
    # to_dict passed np.bool_ through: json.dumps raised "not JSON serializable".
    health = HealthChecker(check_timeout_s=2)
    health.add_liveness_check("np", lambda: HealthStatus(np.bool_(True)))  # type: ignore[arg-type]
    report = json.loads(json.dumps(health.get_health_report()))
    assert report["alive"] is True
    assert report["liveness"]["np"]["healthy"] is True


def test_healthy_set_after_construction_is_normalised_too() -> None:
    status = HealthStatus(True)
    status.healthy = np.bool_(False)  # type: ignore[assignment]
    assert status.to_dict()["healthy"] is False
    status.healthy = np.array([True, True, False])  # type: ignore[assignment]
    assert status.to_dict()["healthy"] is False
    health = HealthChecker(check_timeout_s=2)
    health.add_readiness_check("later", lambda: status)
    assert health.is_ready() is False
    assert health.results("readiness")["later"].healthy is False
