"""Metrics: which model version the exposition says is served, in one process and several."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

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
