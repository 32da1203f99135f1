"""`helm lint --strict` on every values set under helm/frameworm/ci."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.deploy.chart import CHART, VALUES_SETS, values

KUBE_VERSION = "v1.31.0"


def test_every_values_set_is_covered() -> None:
    assert {"default", "gpu", "rollout", "redis-s3-ingress", "prestop"} <= set(VALUES_SETS)


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_chart_lints_clean_in_strict_mode(values_set: str) -> None:
    report = helm.lint(CHART, values(values_set), strict=True, kube_version=KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
