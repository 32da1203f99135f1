"""The alert rules the PrometheusRule embeds pass `promtool check rules` and their unit tests
(prometheus-rules.test.yaml: each alert fires on a breaking series and stays quiet otherwise)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.chart import CHART, NAMESPACE, one, render_values
from tests.support import require_executable

RULES = CHART / "files" / "prometheus-rules.yaml"
UNIT_TESTS = Path(__file__).parent / "prometheus-rules.test.yaml"
ALERTS = {
    "FramewormHighErrorRate",
    "FramewormHighLatencyP99",
    "FramewormHighCPU",
    "FramewormHighMemory",
    "FramewormModelNotReady",
    "FramewormQueueSaturated",
    # On Prometheus's own `up`: a crash-looping pod keeps no series of its own.
    "FramewormTargetDown",
    "FramewormAbsent",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_executable("promtool")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_description_and_a_runbook_anchor() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()


def test_every_alert_is_unit_tested_both_firing_and_quiet() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert firing == ALERTS
    assert quiet == ALERTS


def test_promtool_unit_tests_fail_when_a_threshold_is_broken(tmp_path: Path) -> None:
    broken_rules = tmp_path / "rules.yaml"
    broken_rules.write_text(RULES.read_text().replace(") > 0.01", ") > 0.5"))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(broken_rules)]
    broken_tests = tmp_path / "tests.yaml"
    broken_tests.write_text(yaml.safe_dump(tests))
    result = _promtool("test", "rules", str(broken_tests))
    assert result.returncode != 0


def test_the_chart_s_absent_alert_carries_the_release_namespace(tmp_path: Path) -> None:
    """absent() of a comparison has no labels: the alert had no namespace, and the operator
    routes an AlertmanagerConfig's alerts by namespace, so this page never left."""
    manifests = render_values({"monitoring": {"prometheusRule": {"enabled": True}}})
    spec = one(manifests, "PrometheusRule")["spec"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    (absent,) = [r for g in spec["groups"] for r in g["rules"] if r["alert"] == "FramewormAbsent"]
    down = "1 1 0x20"
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'up{{job="frameworm", namespace="{NAMESPACE}", pod="a"}}',
                        "values": down,
                    },
                    # Another release's pods, up in another namespace, do not hide this one's.
                    {"series": 'up{job="frameworm", namespace="other", pod="b"}', "values": "1x22"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "FramewormAbsent",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "namespace": NAMESPACE},
                                "exp_annotations": absent["annotations"],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests))
    result = _promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
