"""The dashboard's error panel, evaluated by promtool on made-up series: a healthy service reads 0
(its 5xx series does not exist until the first 5xx), 504s for deadlines clients chose are left
out as the alert and the canary analysis leave them out, and no traffic reads as no data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.deploy.chart import CHART, assert_promql_cases
from tests.support import require_executable

DASHBOARD = CHART / "files" / "grafana-dashboard.json"
LABELS = 'job="frameworm", namespace="ml", handler="/v2/models/{name}/infer", method="POST"'


def _panel_query(title: str) -> str:
    """The panel's one query, with what Grafana substitutes for the variables."""
    model = json.loads(DASHBOARD.read_text())
    (expr,) = [t["expr"] for p in model["panels"] if p["title"] == title for t in p["targets"]]
    text: str = expr.replace("$job", "frameworm").replace('=~"$namespace"', '=~".*"')
    return text.replace("$__rate_interval", "1m")


def _requests(status: str, per_step: int) -> tuple[str, str]:
    return f'http_requests_total{{{LABELS}, status="{status}"}}', f"0+{per_step}x60"


def _client_deadline(per_step: int) -> tuple[str, str]:
    labels = 'job="frameworm", namespace="ml", pod="a", reason="client_deadline"'
    return f"frameworm_requests_shed_total{{{labels}}}", f"0+{per_step}x60"


def _case(name: str, series: list[tuple[str, str]], value: float | None) -> dict[str, Any]:
    expr = _panel_query("Error rate (5xx share)")
    samples = [] if value is None else [{"labels": "{}", "value": value}]
    return {
        "name": name,
        "interval": "15s",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [{"expr": expr, "eval_time": "10m", "exp_samples": samples}],
    }


def test_the_error_panel_reads_zero_when_healthy_and_leaves_client_deadlines_out(
    tmp_path: Path,
) -> None:
    promtool = require_executable("promtool")
    cases = [
        _case("healthy, no 5xx series yet: 0", [_requests("2xx", 15)], 0),
        _case(
            "504s for deadlines clients chose only: 0",
            [_requests("2xx", 9), _requests("5xx", 1), _client_deadline(1)],
            0,
        ),
        _case("server errors: their share", [_requests("2xx", 9), _requests("5xx", 1)], 0.1),
        _case(
            "server errors beside client deadline misses: the server's share",
            [_requests("2xx", 8), _requests("5xx", 2), _client_deadline(1)],
            0.1,
        ),
        _case("no traffic: no data", [_client_deadline(1)], None),
    ]
    assert_promql_cases(promtool, tmp_path / "dashboard.test.yaml", cases)
