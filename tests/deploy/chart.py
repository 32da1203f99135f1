"""Renders the chart offline (helm-python-sdk: Helm's own engine, no cluster, no network)."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "frameworm"
VALUES_SETS = sorted(path.stem for path in (CHART / "ci").glob("*.yaml"))
RELEASE = "fw"
NAMESPACE = "ml"

Manifest = dict[str, Any]


def values(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((CHART / "ci" / f"{name}.yaml").read_text(encoding="utf-8"))
    return dict(loaded or {})


def render_values(overrides: dict[str, Any], namespace: str = NAMESPACE) -> list[Manifest]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(overrides, name=RELEASE, namespace=namespace, is_install=True)
    return [
        document
        for template, text in sorted(rendered.items())
        if template.endswith((".yaml", ".yml"))
        for document in yaml.safe_load_all(text)
        if document
    ]


@functools.cache
def _rendered(name: str) -> tuple[Manifest, ...]:
    return tuple(render_values(values(name)))


def render(name: str) -> list[Manifest]:
    """The manifests a values set renders to (cached; callers must not mutate them)."""
    return list(_rendered(name))


def merged_values(name: str) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(values(name))


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = of_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """Every pod spec the chart makes: (kind/name, spec)."""
    for manifest in manifests:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind in {"Deployment", "Rollout", "Job"}:
            yield f"{kind}/{name}", manifest["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield f"{kind}/{name}", manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def server_pod_spec(manifests: list[Manifest]) -> Manifest:
    workloads = of_kind(manifests, "Deployment") + of_kind(manifests, "Rollout")
    assert len(workloads) == 1, "exactly one of Deployment and Rollout must be rendered"
    spec: Manifest = workloads[0]["spec"]["template"]["spec"]
    return spec


def server_container(manifests: list[Manifest]) -> Manifest:
    containers = server_pod_spec(manifests)["containers"]
    return next(c for c in containers if c["name"] == "frameworm")


def settings(manifests: list[Manifest]) -> dict[str, str]:
    configmaps = [
        c for c in of_kind(manifests, "ConfigMap") if "FRAMEWORM_HOST" in c.get("data", {})
    ]
    assert len(configmaps) == 1
    data: dict[str, str] = configmaps[0]["data"]
    return data


def assert_promql_cases(promtool: str, path: Path, cases: list[dict[str, Any]]) -> None:
    """Run promtool's unit tests `cases` (each with its input series and PromQL expectations),
    written to `path`; fail with promtool's output unless every case holds."""
    document = {"rule_files": [], "evaluation_interval": "15s", "tests": cases}
    path.write_text(yaml.safe_dump(document))
    result = subprocess.run(  # nosec B603  # promtool, found on PATH by the caller
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
