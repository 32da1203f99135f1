"""Metrics: which model version the exposition says is served, in one process and several;
which format an Accept header gets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.telemetry.metrics import Metrics


def info_series(exposition: str) -> dict[str, float]:
    return {
        sample.labels["version"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "frameworm_model_info"
    }


def version(name: str) -> Any:
    return cast(Any, SimpleNamespace(name="m", version=name))


def test_a_switch_leaves_only_the_served_version_in_one_process() -> None:
    metrics = Metrics("m")
    metrics.model_serving(version("1.0.0"), "production", "cpu")
    metrics.model_serving(version("2.0.0"), "production", "cpu")
    assert info_series(metrics.render("text/plain")[0].decode()) == {"2.0.0": 1.0}
    metrics.model_serving(None, "production", "cpu")  # unloaded
    assert info_series(metrics.render("text/plain")[0].decode()) == {}


SEVERAL_WORKERS = """
from types import SimpleNamespace
from app.telemetry.metrics import Metrics
metrics = Metrics("m")
for name in ("1.0.0", "2.0.0"):
    metrics.model_serving(SimpleNamespace(name="m", version=name), "production", "cpu")
print(metrics.render("text/plain")[0].decode())
"""


def test_a_switch_sets_the_old_version_to_0_in_the_shared_files_of_several_workers(
    tmp_path: Path,
) -> None:
    # prometheus_client picks its multiprocess values at import: a fresh interpreter.
    done = subprocess.run(
        [sys.executable, "-c", SEVERAL_WORKERS],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "not been implemented" not in done.stderr  # no clear() in multiprocess mode
    assert info_series(done.stdout) == {"1.0.0": 0.0, "2.0.0": 1.0}


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        # Prometheus's own scrape header.
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("application/OpenMetrics-Text", True),  # media types are case-insensitive
        ("text/plain;q=0.5, application/openmetrics-text;q=0.5", True),  # a tie: the one named
        ("application/openmetrics-text;q=0, text/plain", False),  # q=0: not acceptable
        ("application/openmetrics-text; Q=0", False),
        ("text/plain, application/openmetrics-text;q=0.9", False),
        ("*/*, application/openmetrics-text;q=0.5", False),
        ("text/*;q=0.2, */*, application/openmetrics-text;q=0.5", True),  # text/* before */*
        ("application/openmetrics-text;q=2", False),  # no such q: the range is ignored
        ("application/openmetrics-text;q=high", False),
        ("application/openmetrics-text-extended", False),  # another type, not a prefix match
        ("*/*", False),
        ("", False),
    ],
)
def test_openmetrics_is_served_when_accept_prefers_it(accept: str, openmetrics: bool) -> None:
    """A substring test gave OpenMetrics for `q=0` (not acceptable) and text for a type in
    another case."""
    body, content_type = Metrics("m").render(accept)
    assert content_type.startswith("application/openmetrics-text") is openmetrics
    assert body.endswith(b"# EOF\n") is openmetrics
