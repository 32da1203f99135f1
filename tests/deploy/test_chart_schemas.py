"""Every rendered manifest validates: built-in kinds against the Kubernetes schemas of a pinned
version (kubernetes-validate ships them), custom kinds against their CRDs' OpenAPI schemas
(vendored under crds/, see crds/README.md)."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest

from tests.deploy.chart import VALUES_SETS, Manifest, render, render_values

KUBERNETES_VERSION = "1.31.0"
CRDS = Path(__file__).parent / "crds"
CUSTOM_KINDS = {
    ("argoproj.io/v1alpha1", "Rollout"): "argoproj.io_v1alpha1_Rollout.json",
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): "argoproj.io_v1alpha1_AnalysisTemplate.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_ServiceMonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_PrometheusRule.json",
    ("monitoring.coreos.com/v1alpha1", "AlertmanagerConfig"): (
        "monitoring.coreos.com_v1alpha1_AlertmanagerConfig.json"
    ),
}


def _python_regex(pattern: Any) -> bool:
    try:
        re.compile(pattern)
    except (re.error, TypeError):
        return False
    return True


def _strict(node: Any) -> Any:
    """The API server prunes unknown fields; here they are errors, so typos cannot hide.
    OpenAPI's `nullable` becomes a JSON Schema null type; the few Go (RE2) patterns Python's
    `re` cannot read are dropped."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: _strict(value) for key, value in node.items()}
    if "pattern" in schema and not _python_regex(schema["pattern"]):
        del schema["pattern"]
    preserves = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in schema and "additionalProperties" not in schema and not preserves:
        schema["additionalProperties"] = False
    if schema.pop("nullable", False) and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    return schema


@functools.cache
def _crd_validator(filename: str) -> jsonschema.protocols.Validator:
    schema = _strict(json.loads((CRDS / filename).read_text(encoding="utf-8")))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def _validate(manifest: Manifest) -> None:
    key = (manifest["apiVersion"], manifest["kind"])
    if key in CUSTOM_KINDS:
        _crd_validator(CUSTOM_KINDS[key]).validate(manifest)
    else:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def _as_deployment(rollout: Manifest) -> Manifest:
    """The Rollout CRD's copy of the pod schema is looser; check it as a Deployment's too."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": rollout["metadata"]["name"]},
        "spec": {"selector": rollout["spec"]["selector"], "template": rollout["spec"]["template"]},
    }


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_every_rendered_manifest_matches_its_schema(values_set: str) -> None:
    for manifest in render(values_set):
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            _validate(manifest)
            if manifest["kind"] == "Rollout":
                _validate(_as_deployment(manifest))
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            pytest.fail(f"{values_set}: {name} is invalid: {error}")


@pytest.mark.parametrize(
    ("values_set", "kind"),
    [("rollout", "Rollout"), ("rollout", "ServiceMonitor"), ("default", "Deployment")],
)
def test_the_schema_check_rejects_a_misspelt_field(values_set: str, kind: str) -> None:
    manifest = copy.deepcopy(next(m for m in render(values_set) if m["kind"] == kind))
    manifest["spec"]["replicaz"] = 3
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(manifest)


def test_the_rollout_pod_template_is_checked_as_a_deployment_would_be() -> None:
    rollout = copy.deepcopy(next(m for m in render("rollout") if m["kind"] == "Rollout"))
    rollout["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(_as_deployment(rollout))


def test_every_custom_kind_the_chart_can_render_has_a_vendored_schema() -> None:
    everything_on = {
        "rollout": {"enabled": True},
        "monitoring": {"alertmanagerConfig": {"enabled": True}},
    }
    kinds = {(m["apiVersion"], m["kind"]) for m in render_values(everything_on)}
    custom = {key for key in kinds if "." in key[0].split("/")[0] and "k8s.io" not in key[0]}
    assert custom == set(CUSTOM_KINDS)
