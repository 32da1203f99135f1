"""What makes the rendered chart work once deployed: `helm test` checks the model and the
/metrics token the release really has, canary pods are scraped and missing canary data never
reads as healthy, restricted egress reaches the S3 endpoint, alerts and dashboard follow the job
label, a ReadWriteOnce registry claim is never spread over nodes, and secrets stay out of env."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from app.secret_files import SECRET_FIELDS
from tests.deploy.chart import (
    CHART,
    VALUES_SETS,
    Manifest,
    assert_promql_cases,
    merged_values,
    of_kind,
    one,
    render,
    render_values,
    server_container,
    server_pod_spec,
    settings,
)
from tests.support import require_executable, skip_unless_ci

ROOT = CHART.parents[1]
SECRETS_DIR = "/var/run/secrets/frameworm"
SMOKE_ARGS = ["smoke", "http://fw-frameworm.ml.svc:80", "--api-key", "$(SMOKE_API_KEY)"]


def _smoke_job(manifests: list[Manifest]) -> Manifest:
    jobs = [
        j
        for j in of_kind(manifests, "Job")
        if j["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    assert len(jobs) == 1
    return jobs[0]


def _env(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env", [])}


def _has_metrics_token(values: dict[str, Any]) -> bool:
    """The chart-made Secret always has one (given or generated); an existingSecret when listed."""
    secrets = values["secrets"]
    if secrets["existingSecret"]:
        return "metrics-token" in secrets["existingSecretKeys"]
    return True


# ------------------------------------------------------------------------ 1. helm test


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_helm_test_checks_the_served_model_and_sends_the_metrics_token(values_set: str) -> None:
    values = merged_values(values_set)
    manifests = render(values_set)
    spec = _smoke_job(manifests)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = _env(container)
    assert env["FRAMEWORM_MODEL"]["value"] == values["settings"]["model"]
    if not _has_metrics_token(values):
        assert "FRAMEWORM_METRICS_TOKEN_FILE" not in env
        assert "FRAMEWORM_METRICS_TOKEN" not in env
        return
    # The server reads the token from the mounted key; so does `frameworm smoke`.
    server_path = settings(manifests)["FRAMEWORM_METRICS_TOKEN_FILE"]
    assert env["FRAMEWORM_METRICS_TOKEN_FILE"]["value"] == server_path
    mount = next(m for m in container["volumeMounts"] if server_path.startswith(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    secret = volume["secret"]
    server_volumes = {v["name"]: v for v in server_pod_spec(manifests)["volumes"]}
    assert secret["secretName"] == server_volumes["secrets"]["secret"]["secretName"]
    relative = server_path.removeprefix(mount["mountPath"] + "/")
    assert secret["items"] == [{"key": "metrics-token", "path": relative}], (
        "the test pod gets the metrics token only, not the pepper"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "settings": {"model": "resnet-tiny"},
            "secrets": {"metricsToken": "t0ken-0123456789abcdef0123456789abcdef"},
        },
        {
            "settings": {"model": "resnet-tiny"},
            "secrets": {"existingSecret": "mine", "existingSecretKeys": ["metrics-token"]},
        },
    ],
)
def test_helm_test_follows_a_custom_model_and_token(overrides: dict[str, Any]) -> None:
    manifests = render_values(overrides)
    spec = _smoke_job(manifests)["spec"]["template"]["spec"]
    env = _env(spec["containers"][0])
    assert env["FRAMEWORM_MODEL"]["value"] == "resnet-tiny"
    assert env["FRAMEWORM_METRICS_TOKEN_FILE"]["value"] == f"{SECRETS_DIR}/metrics-token"
    volumes = {v["name"]: v for v in spec["volumes"]}
    expected = overrides["secrets"].get("existingSecret") or "fw-frameworm"
    assert volumes["secrets"]["secret"]["secretName"] == expected


def test_helm_test_allows_a_server_without_auth_only_when_auth_is_off() -> None:
    on = _smoke_job(render("default"))["spec"]["template"]["spec"]["containers"][0]
    assert on["args"] == SMOKE_ARGS
    off = render_values({"settings": {"authEnabled": False, "env": "development"}})
    assert _smoke_job(off)["spec"]["template"]["spec"]["containers"][0]["args"] == [
        *SMOKE_ARGS,
        "--allow-no-auth",
    ]


# ------------------------------------------------------------- 2. canary scraping, analysis


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "In" and labels.get(key) not in expression["values"]:
            return False
        if operator == "NotIn" and labels.get(key) in expression["values"]:
            return False
    return True


def test_every_pod_stable_or_canary_is_scraped_exactly_once_under_traffic_routing() -> None:
    manifests = render("rollout")
    canary = one(manifests, "Rollout")["spec"]["strategy"]["canary"]
    monitor = one(manifests, "ServiceMonitor")
    scraped = [
        s
        for s in of_kind(manifests, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert len(scraped) == 1, "each pod must be one target, not one per Service"
    service = scraped[0]
    # Argo Rollouts adds rollouts-pod-template-hash to the selectors of the Services it is given;
    # the scraped one must not be among them, so it keeps selecting canary and stable pods.
    assert service["metadata"]["name"] not in {canary["stableService"], canary["canaryService"]}
    pod_labels = one(manifests, "Rollout")["spec"]["template"]["metadata"]["labels"]
    canary_pod = {**pod_labels, "rollouts-pod-template-hash": "canary123"}
    assert all(canary_pod.get(k) == v for k, v in service["spec"]["selector"].items())
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert monitor["spec"]["podTargetLabels"] == ["rollouts-pod-template-hash"]


def test_without_a_rollout_the_pods_are_scraped_once_too() -> None:
    manifests = render("default")
    monitor = one(manifests, "ServiceMonitor")
    scraped = [
        s
        for s in of_kind(manifests, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert len(scraped) == 1
    selector = scraped[0]["spec"]["selector"]
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in selector.items())


def _argo_phase(metric: Manifest, result: list[float]) -> str:
    """Argo Rollouts' EvaluateResult (utils/evaluate): both conditions are expr expressions over
    `result`; an evaluation error is an Error measurement, neither condition is Inconclusive."""

    def evaluate(condition: str) -> bool:
        python = condition.replace("&&", " and ").replace("||", " or ")
        value = eval(python, {"__builtins__": {}}, {"len": len, "result": result})  # noqa: S307
        assert isinstance(value, bool), condition
        return value

    try:
        success = evaluate(metric["successCondition"]) if "successCondition" in metric else None
        failure = evaluate(metric["failureCondition"]) if "failureCondition" in metric else None
    except IndexError:
        return "Error"
    if success is None and failure is None:
        return "Successful"
    if failure is None:
        failure = not success
    if success is None:
        success = not failure
    if failure:
        return "Failed"
    return "Successful" if success else "Inconclusive"


def _analysis_metrics() -> dict[str, Manifest]:
    template = one(render("rollout"), "AnalysisTemplate")
    return {m["name"]: m for m in template["spec"]["metrics"]}


@pytest.mark.parametrize(
    ("metric", "result", "phase"),
    [
        ("error-ratio", [0.0], "Successful"),
        ("error-ratio", [0.01], "Successful"),
        ("error-ratio", [0.02], "Failed"),
        ("error-ratio", [], "Inconclusive"),  # the canary is not scraped / has no series
        ("error-ratio", [math.nan], "Inconclusive"),  # 0/0: no requests in the window
        ("latency-p99", [0.2], "Successful"),
        ("latency-p99", [0.9], "Failed"),
        ("latency-p99", [], "Inconclusive"),
        ("latency-p99", [math.nan], "Inconclusive"),
    ],
)
def test_missing_canary_data_is_inconclusive_never_healthy(
    metric: str, result: list[float], phase: str
) -> None:
    assert _argo_phase(_analysis_metrics()[metric], result) == phase


def test_the_analysis_states_its_limits_and_never_defaults_to_zero() -> None:
    analysis = merged_values("rollout")["rollout"]["analysis"]
    for metric in _analysis_metrics().values():
        assert "or vector(0)" not in metric["provider"]["prometheus"]["query"]
        assert metric["inconclusiveLimit"] == analysis["inconclusiveLimit"]
        assert metric["initialDelay"] == analysis["initialDelay"]
        assert metric["failureLimit"] == analysis["failureLimit"]


def _promql_case(
    name: str, series: list[tuple[str, str]], expr: str, samples: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": name,
        "interval": "15s",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [{"expr": expr, "eval_time": "10m", "exp_samples": samples}],
    }


def test_the_analysis_queries_answer_empty_without_canary_data(tmp_path: Path) -> None:
    """promtool evaluates the rendered queries: a canary that never failed reads 0 (its 5xx series
    does not exist yet), a failing one its ratio, and no canary series or no requests read as
    no result (Inconclusive above), never as 0."""
    promtool = require_executable("promtool")
    metrics = _analysis_metrics()
    args = {"{{args.namespace}}": "ml", "{{args.canary-hash}}": "c4n4ry"}

    def query(metric: str) -> str:
        text: str = metrics[metric]["provider"]["prometheus"]["query"]
        for placeholder, value in args.items():
            text = text.replace(placeholder, value)
        return text

    def requests(hash_: str, status: str, per_step: int) -> tuple[str, str]:
        labels = (
            f'job="frameworm", namespace="ml", rollouts_pod_template_hash="{hash_}", '
            f'handler="/v2/models/{{name}}/infer", method="POST", status="{status}"'
        )
        return f"http_requests_total{{{labels}}}", f"0+{per_step}x60"

    def bucket(hash_: str, le: str, per_step: int) -> tuple[str, str]:
        labels = (
            f'job="frameworm", namespace="ml", rollouts_pod_template_hash="{hash_}", '
            f'handler="/v2/models/{{name}}/infer", method="POST", le="{le}"'
        )
        return f"http_request_duration_seconds_bucket{{{labels}}}", f"0+{per_step}x60"

    probes_only = (
        'http_requests_total{job="frameworm", namespace="ml", '
        'rollouts_pod_template_hash="c4n4ry", handler="/readyz", method="GET", status="2xx"}',
        "0+15x60",
    )
    cases = [
        _promql_case(
            "healthy canary, no 5xx series yet: 0",
            [requests("c4n4ry", "2xx", 15), requests("st4ble", "5xx", 15)],
            query("error-ratio"),
            [{"labels": "{}", "value": 0}],
        ),
        _promql_case(
            "failing canary: its own ratio",
            [requests("c4n4ry", "2xx", 9), requests("c4n4ry", "5xx", 1)],
            query("error-ratio"),
            [{"labels": "{}", "value": 0.1}],
        ),
        _promql_case(
            "504s for deadlines the canary's clients chose are no errors of the canary",
            [
                requests("c4n4ry", "2xx", 9),
                requests("c4n4ry", "5xx", 1),
                (
                    'frameworm_requests_shed_total{job="frameworm", namespace="ml", '
                    'rollouts_pod_template_hash="c4n4ry", reason="client_deadline"}',
                    "0+1x60",
                ),
            ],
            query("error-ratio"),
            [{"labels": "{}", "value": 0}],
        ),
        _promql_case(
            "only the stable pods are scraped: no result",
            [requests("st4ble", "2xx", 15), requests("st4ble", "5xx", 15)],
            query("error-ratio"),
            [],
        ),
        _promql_case(
            "the canary answered probes only: no result",
            [probes_only],
            query("error-ratio"),
            [],
        ),
        _promql_case(
            "canary latency: its own p99",
            [bucket("c4n4ry", "0.1", 15), bucket("c4n4ry", "+Inf", 15)],
            query("latency-p99"),
            [{"labels": "{}", "value": 0.099}],
        ),
        _promql_case(
            "no canary latency series: no result",
            [bucket("st4ble", "0.1", 15), bucket("st4ble", "+Inf", 15)],
            query("latency-p99"),
            [],
        ),
    ]
    assert_promql_cases(promtool, tmp_path / "analysis.test.yaml", cases)


# ------------------------------------------------------------------- 3. egress to S3


def _egress_tcp_ports(manifests: list[Manifest]) -> set[int]:
    policy = one(manifests, "NetworkPolicy")
    return {
        port["port"]
        for rule in policy["spec"]["egress"]
        for port in rule.get("ports", [])
        if port["protocol"] == "TCP"
    }


def test_restricted_egress_reaches_the_ci_s3_endpoint() -> None:
    manifests = render("redis-s3-ingress")
    endpoint = settings(manifests)["AWS_ENDPOINT_URL"]
    assert endpoint == "http://minio.storage.svc:9000"
    ports = _egress_tcp_ports(manifests)
    assert 9000 in ports
    assert {443, 6379, 4317, 4318} <= ports
    init = server_pod_spec(manifests)["initContainers"][0]
    assert init["name"] == "registry-pull", "the init container is what needs the endpoint"


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://minio.storage.svc:9000", 9000),
        ("http://minio.storage.svc", 80),
        ("https://s3.eu-west-1.amazonaws.com", 443),
        ("https://objects.example:8443/prefix", 8443),
        ("http://[fd00::1]:9100", 9100),
    ],
)
def test_the_s3_endpoint_port_is_derived_from_its_url(url: str, port: int) -> None:
    manifests = render_values(
        {
            "registry": {"source": "s3Pull", "s3Uri": "s3://b/p", "s3EndpointUrl": url},
            "networkPolicy": {"egress": {"restrict": True}},
        }
    )
    assert port in _egress_tcp_ports(manifests)
    policy = one(manifests, "NetworkPolicy")
    tcp = [
        p["port"] for r in policy["spec"]["egress"] for p in r["ports"] if p["protocol"] == "TCP"
    ]
    assert len(tcp) == len(set(tcp)), "a port already listed is not repeated"


def test_an_s3_endpoint_that_is_no_http_url_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="s3EndpointUrl"):
        render_values(
            {
                "registry": {"s3EndpointUrl": "minio.storage.svc:9000"},
                "networkPolicy": {"egress": {"restrict": True}},
            }
        )


# --------------------------------------------------------- 4. job label and nameOverride


def _rule_exprs(manifests: list[Manifest]) -> list[str]:
    rule = one(manifests, "PrometheusRule")
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def _dashboard(manifests: list[Manifest]) -> dict[str, Any]:
    configmap = next(
        c for c in of_kind(manifests, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    )
    ((text,),) = [list(configmap["data"].values())]
    model: dict[str, Any] = json.loads(text)
    return model


def _scraped_job(manifests: list[Manifest]) -> str:
    """The job label Prometheus gives the targets: the scraped Service's jobLabel value."""
    monitor = one(manifests, "ServiceMonitor")
    service = next(
        s
        for s in of_kind(manifests, "Service")
        if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    )
    job: str = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    return job


@pytest.mark.parametrize("overrides", [{}, {"nameOverride": "infer"}])
def test_alerts_and_dashboard_select_the_job_the_service_monitor_produces(
    overrides: dict[str, Any],
) -> None:
    manifests = render_values(overrides)
    job = _scraped_job(manifests)
    assert job == overrides.get("nameOverride", "frameworm")
    exprs = _rule_exprs(manifests)
    jobs = {m for e in exprs for m in re.findall(r'job="([^"]*)"', e)}
    assert jobs == {job}
    model = _dashboard(manifests)
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["job"]["type"] == "constant"
    assert variables["job"]["query"] == job
    assert variables["job"]["current"]["value"] == job
    queries = [t["expr"] for p in model["panels"] for t in p["targets"]]
    queries.append(variables["namespace"]["query"]["query"])
    for query in queries:
        assert re.findall(r'job="([^"]*)"', query) == ["$job"] * query.count("job="), query


def test_the_dashboard_file_and_its_default_rendering_agree() -> None:
    source = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    rendered = _dashboard(render("default"))
    # Named per release (test_chart_policies.py); the rest is the file's.
    assert {**rendered, "uid": source["uid"], "title": source["title"]} == source


def test_each_release_has_a_dashboard_of_its_own() -> None:
    """Every release's ConfigMap carried uid "frameworm-overview": the Grafana sidecar kept one
    of them, and the other release had no dashboard (Grafana also refuses two dashboards of
    one title in a folder)."""
    ml, other = (_dashboard(render_values({}, namespace=ns)) for ns in ("ml", "ml-canary"))
    assert ml["uid"] != other["uid"] and len(ml["uid"]) <= 40
    # The sidecar writes each key as a file: one key for all releases was one file.
    keys = {
        key
        for ns in ("ml", "ml-canary")
        for c in of_kind(render_values({}, namespace=ns), "ConfigMap")
        if c["metadata"]["name"].endswith("-dashboard")
        for key in c["data"]
    }
    assert len(keys) == 2
    assert ml["title"] == "Frameworm (ml/fw-frameworm)"
    assert other["title"] == "Frameworm (ml-canary/fw-frameworm)"
    assert _dashboard(render_values({}, namespace="ml"))["uid"] == ml["uid"]  # stable


# -------------------------------------------------------- 5. ReadWriteOnce registry claim


@pytest.mark.parametrize(
    "overrides",
    [
        {"replicaCount": 2},
        {"replicaCount": 1, "autoscaling": {"enabled": True}},
        {"replicaCount": 1, "rollout": {"enabled": True}},
    ],
)
def test_a_readwriteonce_registry_is_refused_for_pods_on_several_nodes(
    overrides: dict[str, Any],
) -> None:
    values = {"registry": {"source": "pvc", "pvc": {"accessModes": ["ReadWriteOnce"]}}}
    with pytest.raises(helm.HelmError, match=r"ReadWriteOnce.*Multi-Attach"):
        render_values({**values, **overrides})


def test_the_default_replicas_with_the_default_claim_fail_with_a_clear_message() -> None:
    with pytest.raises(helm.HelmError, match=r"replicaCount=2.*ReadWriteMany"):
        render_values({"registry": {"source": "pvc"}})


def test_readwriteoncepod_is_refused() -> None:
    values = {
        "replicaCount": 1,
        "registry": {"source": "pvc", "pvc": {"accessModes": ["ReadWriteOncePod"]}},
    }
    with pytest.raises(helm.HelmError, match="ReadWriteOncePod"):
        render_values(values)


def test_one_replica_on_readwriteonce_renders_and_the_backup_joins_its_node() -> None:
    manifests = render_values(
        {
            "replicaCount": 1,
            "registry": {"source": "pvc"},
            "backup": {"enabled": True, "s3Uri": "s3://b/p"},
        }
    )
    assert one(manifests, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    cronjob = one(manifests, "CronJob")
    spec = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    term = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    server_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert _selects(term["labelSelector"], server_labels)


def test_on_readwriteonce_a_rolling_update_starts_the_new_pod_on_the_claims_node() -> None:
    user_term = {"labelSelector": {"matchLabels": {"cache": "warm"}}, "topologyKey": "zone"}
    user_affinity = {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []},
        "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [user_term]},
    }
    manifests = render_values(
        {"replicaCount": 1, "registry": {"source": "pvc"}, "affinity": user_affinity}
    )
    deployment = one(manifests, "Deployment")
    affinity = deployment["spec"]["template"]["spec"]["affinity"]
    assert affinity["nodeAffinity"] == user_affinity["nodeAffinity"]  # the user's, kept
    user, own = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert user == user_term
    assert own["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(own["labelSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_readwritemany_allows_replicas_autoscaling_and_a_free_backup() -> None:
    manifests = render("prestop")  # ReadWriteMany, 2 replicas, backup
    assert one(manifests, "Deployment")["spec"]["replicas"] == 2
    spec = one(manifests, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "affinity" not in spec
    assert "affinity" not in server_pod_spec(manifests)  # free to spread over nodes
    render_values(
        {
            "registry": {"source": "pvc", "pvc": {"accessModes": ["ReadWriteMany"]}},
            "autoscaling": {"enabled": True},
        }
    )


# --------------------------------------------------------------- 6. secrets and docs


def test_rate_limit_storage_comes_from_the_mounted_secret_not_an_env_var() -> None:
    manifests = render("redis-s3-ingress")
    env = settings(manifests)
    assert env["FRAMEWORM_RATE_LIMIT_STORAGE_FILE"] == f"{SECRETS_DIR}/redis-url"
    assert "FRAMEWORM_RATE_LIMIT_STORAGE" not in env
    container = server_container(manifests)
    names = {e["name"] for e in container.get("env", [])}
    assert "FRAMEWORM_RATE_LIMIT_STORAGE" not in names
    off = settings(
        render_values(
            {
                "redis": {"enabled": True, "rateLimits": False},
                "secrets": {"redisUrl": "redis://r:6379/0"},
            }
        )
    )
    assert "FRAMEWORM_RATE_LIMIT_STORAGE_FILE" not in off
    assert "FRAMEWORM_RATE_LIMIT_STORAGE_FILE" not in settings(render("default"))


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_the_server_takes_no_secret_as_an_env_var(values_set: str) -> None:
    manifests = render(values_set)
    container = server_container(manifests)
    refs = [e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    assert not refs, refs


def _values_comment(key: str) -> str:
    """The comment block right above `key:` in values.yaml."""
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    comment: list[str] = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("#"):
            break
        comment.insert(0, line.strip().lstrip("#").strip())
    return " ".join(comment)


def test_values_docs_match_the_app() -> None:
    lifespan = (ROOT / "app" / "lifespan.py").read_text(encoding="utf-8")
    hook_timeout = re.search(r"^HOOK_TIMEOUT_S = ([0-9.]+)", lifespan, re.MULTILINE)
    assert hook_timeout
    flush = _values_comment("flushSeconds")
    assert "HOOK_TIMEOUT_S" in flush
    assert f"{float(hook_timeout.group(1)):g} s per shutdown hook" in flush
    assert "rate_limit_storage" in SECRET_FIELDS, "the app reads FRAMEWORM_RATE_LIMIT_STORAGE_FILE"
    rate_limits = _values_comment("rateLimits")
    assert "FRAMEWORM_RATE_LIMIT_STORAGE_FILE" in rate_limits
    assert "no _FILE form" not in (CHART / "values.yaml").read_text(encoding="utf-8")


# ------------------------------------------------------- 7. registry seed as the pod user


def _init_container(manifests: list[Manifest], name: str) -> Manifest:
    init: dict[str, Manifest] = {
        c["name"]: c for c in server_pod_spec(manifests).get("initContainers", [])
    }
    return init[name]


def test_the_registry_seed_copies_without_preserving_attributes() -> None:
    command = _init_container(render("default"), "registry-seed")["command"]
    assert command == ["cp", "-R", "/var/lib/frameworm/registry/.", "/mnt/registry/"]


def test_the_registry_seed_command_runs_as_the_pod_user_into_a_root_owned_volume() -> None:
    """The rendered command, its paths mapped into a scratch directory, run as the container's
    UID (no capabilities) into a root-owned mode-0777 directory, as the kubelet makes an emptyDir:
    `cp -a` fails there preserving the target directory's own times (Init:CrashLoopBackOff)."""
    if os.geteuid() != 0:
        skip_unless_ci("needs root to make a root-owned volume and switch to the pod's UID")
    setpriv = require_executable("setpriv")
    init = _init_container(render("default"), "registry-seed")
    uid = init["securityContext"]["runAsUser"]
    gid = init["securityContext"]["runAsGroup"]
    assert uid != 0
    with tempfile.TemporaryDirectory(prefix="frameworm-seed-") as scratch:
        Path(scratch).chmod(0o755)  # traversable by the pod's UID

        def mapped(argument: str) -> str:
            return scratch + argument if argument.startswith("/") else argument

        source = Path(mapped("/var/lib/frameworm/registry"))
        files = {"index.json": "{}", "cnn-digits/1/manifest.json": '{"v": 1}'}
        for relative, text in files.items():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            (source / relative).write_text(text, encoding="utf-8")
        for path in [source, *source.rglob("*")]:  # the image's registry belongs to its user
            os.chown(path, uid, gid)
        mount = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == "registry")
        target = Path(mapped(mount))
        target.mkdir(parents=True)
        os.chown(target, 0, 0)
        target.chmod(0o777)
        command = [mapped(argument) for argument in init["command"]]
        result = subprocess.run(
            [setpriv, "--reuid", str(uid), "--regid", str(gid), "--clear-groups", *command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        for relative, text in files.items():
            assert (target / relative).read_text(encoding="utf-8") == text


# ------------------------------------------------ 8. init, backup resources; S3 cache volume


def test_init_container_and_backup_resources_come_from_values() -> None:
    expected = {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert _init_container(render("default"), "registry-seed")["resources"] == expected
    assert _init_container(render("redis-s3-ingress"), "registry-pull")["resources"] == expected
    cronjob = one(render("prestop"), "CronJob")
    backup = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert backup["resources"] == expected
    bigger = {"requests": {"cpu": "200m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    manifests = render_values(
        {
            "replicaCount": 1,
            "registry": {"source": "pvc", "initResources": bigger},
            "backup": {"enabled": True, "s3Uri": "s3://b/p", "resources": bigger},
        }
    )
    cronjob = one(manifests, "CronJob")
    backup = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert backup["resources"] == bigger
    pulled = render_values(
        {"registry": {"source": "s3Pull", "s3Uri": "s3://b/p", "initResources": bigger}}
    )
    assert _init_container(pulled, "registry-pull")["resources"] == bigger


def _env_value(container: Manifest, name: str) -> str | None:
    entry = _env(container).get(name)
    return None if entry is None else str(entry["value"])


@pytest.mark.parametrize(
    ("registry", "container"),
    [
        ({"source": "s3Pull", "s3Uri": "s3://b/p"}, "registry-pull"),
        ({"source": "s3", "s3Uri": "s3://b/p"}, "frameworm"),
        ({"source": "s3", "s3Uri": "s3://b/p", "emptyDirSizeLimit": "20Gi"}, "frameworm"),
    ],
)
def test_s3_downloads_are_cached_in_a_volume_of_their_own(
    registry: dict[str, Any], container: str
) -> None:
    """models/s3.py caches under XDG_CACHE_HOME; the image's /tmp/.cache sits in the small /tmp
    volume, whose sizeLimit a large registry overruns (the pod is evicted)."""
    manifests = render_values({"registry": registry})
    spec = server_pod_spec(manifests)
    everything = {c["name"]: c for c in spec["containers"] + spec.get("initContainers", [])}
    reader = everything[container]
    cache_home = _env_value(reader, "XDG_CACHE_HOME")
    assert cache_home and not cache_home.startswith("/tmp")
    mount = next(m for m in reader["volumeMounts"] if m["mountPath"] == cache_home)
    volumes = {v["name"]: v for v in spec["volumes"]}
    limit = registry.get("emptyDirSizeLimit", "2Gi")
    assert volumes[mount["name"]] == {"name": mount["name"], "emptyDir": {"sizeLimit": limit}}
    assert mount["name"] not in {"tmp", "registry"}


def test_no_cache_volume_without_s3() -> None:
    for values_set in ("default", "prestop"):
        spec = server_pod_spec(render(values_set))
        assert "cache" not in {v["name"] for v in spec["volumes"]}, values_set


# ------------------------------------------------------- 9. secret changes roll the pods

PINNED_SECRETS = {
    "apiKeyPepper": "p" * 40,
    "bootstrapApiKey": "fw_" + "k" * 40,
    "metricsToken": "scrape-token-1-0123456789abcdef0123456789",
}


def _pod_annotations(overrides: dict[str, Any]) -> dict[str, str]:
    manifests = render_values(overrides)
    deployments = of_kind(manifests, "Deployment") + of_kind(manifests, "Rollout")
    annotations: dict[str, str] = deployments[0]["spec"]["template"]["metadata"]["annotations"]
    return annotations


@pytest.mark.parametrize(
    "change",
    [
        {"secrets": {"metricsToken": "scrape-token-2-0123456789abcdef0123456789"}},
        {"secrets": {"apiKeyPepper": "q" * 40}},
        {"secrets": {"bootstrapApiKey": "fw_" + "j" * 40}},
        {"redis": {"enabled": True}, "secrets": {"redisUrl": "redis://:pw@redis:6379/0"}},
    ],
)
def test_a_changed_secret_value_rolls_the_pods(change: dict[str, Any]) -> None:
    """The app reads its secrets at start only: the pod template must change with them."""
    before = _pod_annotations({"secrets": PINNED_SECRETS})
    assert _pod_annotations({"secrets": PINNED_SECRETS}) == before, "same values, same template"
    changed = {**change, "secrets": {**PINNED_SECRETS, **change.get("secrets", {})}}
    after = _pod_annotations(changed)
    assert after["checksum/secret"] != before["checksum/secret"]
    if "redis" not in change:  # a rotation: the ConfigMap (file paths only) is the same
        assert after["checksum/config"] == before["checksum/config"]


def test_the_secret_checksum_is_over_the_data_the_secret_holds() -> None:
    """Generated values are made once per render: the checksum covers the Secret's very data."""
    manifests = render_values({"rollout": {"enabled": True}})
    data = one(manifests, "Secret")["data"]
    text = "\n".join(f"{key}: {value}" for key, value in sorted(data.items()))
    rollout = one(manifests, "Rollout")["spec"]["template"]["metadata"]["annotations"]
    assert rollout["checksum/secret"] == hashlib.sha256(text.encode()).hexdigest()


def test_an_existing_secret_gets_no_secret_checksum() -> None:
    annotations = _pod_annotations({"secrets": {"existingSecret": "mine"}})
    assert "checksum/secret" not in annotations
    assert "checksum/config" in annotations


# ------------------------------------------------------- 10. a chart-made claim starts empty


def _notes(overrides: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(overrides, name="fw", namespace="ml", is_install=True)
    return next(text for name, text in rendered.items() if name.endswith("NOTES.txt"))


def test_the_notes_say_how_to_fill_a_chart_made_registry_claim() -> None:
    notes = _notes({"replicaCount": 1, "registry": {"source": "pvc"}})
    assert "fw-frameworm-registry" in notes
    assert "EMPTY" in notes and "code 3" in notes
    assert "frameworm registry pull --all --from s3://" in notes
    assert "registry.source=s3Pull" in notes
    existing = _notes(
        {"replicaCount": 1, "registry": {"source": "pvc", "pvc": {"existingClaim": "models"}}}
    )
    assert "models" in existing and "registry pull" not in existing
    assert "registry pull" not in _notes({})
    comment = _values_comment("pvc")
    assert "starts EMPTY" in comment and "registry pull --all --from" in comment


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_no_values_set_gives_an_s3_uri_its_registry_source_ignores(values_set: str) -> None:
    registry = merged_values(values_set)["registry"]
    if registry["source"] not in {"s3Pull", "s3"}:
        assert not registry["s3Uri"], "registry.s3Uri is read only by the s3Pull and s3 sources"


# ------------------------------------------------------- 11. values that fail the render


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_the_shutdown_timeout_covers_the_request_deadline(values_set: str) -> None:
    """A request admitted just before the listener closes may take its whole deadline."""
    values = merged_values(values_set)
    env = settings(render(values_set))
    assert float(env["FRAMEWORM_SHUTDOWN_TIMEOUT_S"]) * 1000 >= float(
        env.get("FRAMEWORM_REQUEST_TIMEOUT_MS", 10000)
    )
    assert (
        values["drain"]["shutdownTimeoutSeconds"] * 1000 >= values["settings"]["requestTimeoutMs"]
    )


def test_a_request_deadline_longer_than_the_shutdown_timeout_is_refused() -> None:
    with pytest.raises(
        helm.HelmError, match=r"shutdownTimeoutSeconds=20.*requestTimeoutMs=30000.*>= 30"
    ):
        render_values({"settings": {"requestTimeoutMs": 30000}})
    with pytest.raises(helm.HelmError, match=r"shutdownTimeoutSeconds >= 21"):
        render_values({"settings": {"requestTimeoutMs": 20001}})
    render_values({"settings": {"requestTimeoutMs": 20000}})
    render_values(
        {"settings": {"requestTimeoutMs": 30000}, "drain": {"shutdownTimeoutSeconds": 30}}
    )


def test_redis_without_a_url_in_the_chart_made_secret_is_refused() -> None:
    with pytest.raises(helm.HelmError, match=r"secrets\.redisUrl is required with redis\.enabled"):
        render_values({"redis": {"enabled": True}})
    manifests = render_values(
        {"redis": {"enabled": True}, "secrets": {"redisUrl": "redis://r:6379/0"}}
    )
    data = one(manifests, "Secret")["data"]
    assert base64.b64decode(data["redis-url"]).decode() == "redis://r:6379/0"
    assert settings(manifests)["FRAMEWORM_REDIS_URL_FILE"] == f"{SECRETS_DIR}/redis-url"
    # An existingSecret is the user's to fill: the chart cannot see it.
    render_values({"redis": {"enabled": True}, "secrets": {"existingSecret": "mine"}})


# ------------------------------------------------------ 12. listen address and keep-alive


def test_the_listen_address_is_a_setting() -> None:
    assert merged_values("default")["settings"]["host"] == "0.0.0.0"
    assert settings(render("default"))["FRAMEWORM_HOST"] == "0.0.0.0"
    assert settings(render_values({"settings": {"host": "::"}}))["FRAMEWORM_HOST"] == "::"
    assert settings(render_values({"settings": {"host": ""}}))["FRAMEWORM_HOST"] == "0.0.0.0"


@pytest.mark.parametrize(
    ("overrides", "keep_alive"),
    [
        ({}, None),  # the app's default, 5 s
        ({"ingress": {"enabled": True}}, "75"),  # above ingress-nginx's 60 s upstream keep-alive
        ({"ingress": {"enabled": True}, "settings": {"keepAliveS": 120}}, "120"),
        ({"settings": {"keepAliveS": 30.5}}, "30.5"),
    ],
)
def test_the_keep_alive_outlasts_the_ingress_upstream_keep_alive(
    overrides: dict[str, Any], keep_alive: str | None
) -> None:
    assert settings(render_values(overrides)).get("FRAMEWORM_KEEP_ALIVE_S") == keep_alive


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_every_values_set_with_an_ingress_keeps_connections_longer_than_nginx(
    values_set: str,
) -> None:
    if merged_values(values_set)["ingress"]["enabled"]:
        assert float(settings(render(values_set))["FRAMEWORM_KEEP_ALIVE_S"]) > 60


def test_the_notes_warn_that_in_memory_rate_limits_count_per_pod() -> None:
    """The chart's defaults (two pods, no Redis) give a key its limit once per pod, which the
    app itself refuses for two workers in one pod; the install notes say so, and how to share."""
    warning = "Rate limits are counted in each pod's memory"
    assert warning in _notes({}) and "2 pods" in _notes({})
    assert "up to 10 pods with the HPA" in _notes({"autoscaling": {"enabled": True}})
    assert warning not in _notes({"replicaCount": 1})
    assert warning not in _notes({"settings": {"rateLimitEnabled": False}})
    shared = {"redis": {"enabled": True}, "secrets": {"redisUrl": "redis://redis:6379/0"}}
    assert warning not in _notes(shared)
    assert warning not in _notes({"settings": {"rateLimitStorage": "redis://redis:6379/0"}})
    assert warning in _notes({**shared, "redis": {"enabled": True, "rateLimits": False}})
