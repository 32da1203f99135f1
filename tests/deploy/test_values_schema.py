"""values.schema.json: Helm refuses values the chart does not read, before rendering anything."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart import VALUES_SETS, render_values, settings, values
from tests.deploy.values_schema import SCHEMA, text


def test_the_schema_is_the_one_values_yaml_gives() -> None:
    assert SCHEMA.read_text(encoding="utf-8") == text(), (
        "values.yaml changed: run python -m tests.deploy.values_schema"
    )


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"autoscalling": {"enabled": True}}, "autoscalling"),
        ({"autoscaling": {"maxReplica": 4}}, "maxReplica"),
        ({"settings": {"maxBatchSise": 16}}, "maxBatchSise"),
        # Read key by key: a field the template does not copy would be silently dropped.
        ({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}, "seccompProfile"),
        ({"ingress": {"enabled": "yes"}}, "enabled"),
    ],
)
def test_a_value_the_chart_does_not_read_fails_the_install_naming_it(
    overrides: dict[str, Any], where: str
) -> None:
    with pytest.raises(helm.HelmError, match=where):
        render_values(overrides)


def test_maps_handed_to_kubernetes_whole_take_any_keys() -> None:
    overrides = {
        "podAnnotations": {"example.com/team": "ml"},
        "resources": {"requests": {"cpu": "2", "ephemeral-storage": "1Gi"}},
        "probes": {"startup": {"periodSeconds": 2, "initialDelaySeconds": 1}},
        "autoscaling": {"behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}}},
        "global": {"imageRegistry": "registry.example.com"},  # from a parent chart
    }
    assert render_values(overrides)


def test_every_setting_of_the_app_is_accepted_in_camel_case() -> None:
    env = settings(render_values({"settings": {"maxQueueItems": 64, "cudaTf32": True}}))
    assert env["FRAMEWORM_MAX_QUEUE_ITEMS"] == "64"
    assert env["FRAMEWORM_CUDA_TF32"] == "true"


@pytest.mark.parametrize("name", VALUES_SETS)
def test_the_example_values_sets_meet_the_schema(name: str) -> None:
    assert render_values(values(name))
