"""What the chart promises, checked on every values set: the drain timing budget, restricted pod
security, and the wiring between values, settings and the objects that depend on them."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from app.config import Settings
from tests.deploy.chart import (
    CHART,
    NAMESPACE,
    VALUES_SETS,
    Manifest,
    merged_values,
    of_kind,
    one,
    pod_specs,
    render,
    render_values,
    server_container,
    server_pod_spec,
    settings,
    values,
)

SECRETS_DIR = "/var/run/secrets/frameworm"


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_grace_period_covers_drain_shutdown_flush_and_margin(values_set: str) -> None:
    drain = merged_values(values_set)["drain"]
    manifests = render(values_set)
    budget = sum(
        drain[key]
        for key in ("delaySeconds", "shutdownTimeoutSeconds", "flushSeconds", "marginSeconds")
    )
    assert server_pod_spec(manifests)["terminationGracePeriodSeconds"] >= budget
    assert (
        float(settings(manifests)["FRAMEWORM_SHUTDOWN_TIMEOUT_S"])
        == drain["shutdownTimeoutSeconds"]
    )


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_exactly_one_of_app_drain_delay_and_prestop_sleep_is_active(values_set: str) -> None:
    drain = merged_values(values_set)["drain"]
    manifests = render(values_set)
    app_delay = float(settings(manifests)["FRAMEWORM_DRAIN_DELAY_S"])
    pre_stop = server_container(manifests).get("lifecycle", {}).get("preStop")
    if drain["mode"] == "preStop":
        assert app_delay == 0
        assert pre_stop == {"exec": {"command": ["sleep", str(drain["delaySeconds"])]}}
    else:
        assert app_delay == drain["delaySeconds"] > 0
        assert pre_stop is None


def test_an_unknown_drain_mode_is_refused() -> None:
    with pytest.raises(helm.HelmError, match=r"drain\.mode"):
        render_values({"drain": {"mode": "both"}})


def _check_container_security(where: str, container: dict[str, Any]) -> None:
    context = container.get("securityContext", {})
    assert context.get("allowPrivilegeEscalation") is False, where
    assert context.get("readOnlyRootFilesystem") is True, where
    assert context.get("runAsNonRoot") is True, where
    assert context.get("capabilities", {}).get("drop") == ["ALL"], where
    assert not context.get("capabilities", {}).get("add"), where
    assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", where


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_every_pod_meets_the_restricted_pod_security_standard(values_set: str) -> None:
    specs = list(pod_specs(render(values_set)))
    assert specs
    for where, spec in specs:
        assert spec["automountServiceAccountToken"] is False, where
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for container in spec["containers"] + spec.get("initContainers", []):
            _check_container_security(f"{where}/{container['name']}", container)
            assert "resources" in container, where
        writable = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in writable, f"{where}: /tmp must be a volume on a read-only root"


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_no_pod_gets_service_links(values_set: str) -> None:
    """Kubernetes gives each pod every Service's host and port as variables named after it: a
    release named frameworm made FRAMEWORM_SERVICE_HOST and friends, among the settings."""
    for where, spec in pod_specs(render(values_set)):
        assert spec.get("enableServiceLinks") is False, where


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_the_service_account_token_is_never_mounted(values_set: str) -> None:
    for account in of_kind(render(values_set), "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_probes_use_healthz_for_startup_and_liveness_and_readyz_for_readiness(
    values_set: str,
) -> None:
    container = server_container(render(values_set))
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_settings_come_from_the_configmap_and_secrets_from_mounted_files(values_set: str) -> None:
    manifests = render(values_set)
    env = settings(manifests)
    container = server_container(manifests)
    assert {"configMapRef": {"name": "fw-frameworm"}} in container["envFrom"]
    assert env["FRAMEWORM_HOST"] == "0.0.0.0"
    for name in ("API_KEY_PEPPER", "BOOTSTRAP_API_KEY"):
        assert env[f"FRAMEWORM_{name}_FILE"].startswith(SECRETS_DIR + "/")
        assert f"FRAMEWORM_{name}" not in env
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[SECRETS_DIR]["readOnly"] is True
    secret_names = {
        e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for e in container.get("env", [])
    }
    assert secret_names <= {None}, "secrets come from mounted files, never env vars"
    assert not any(word in key for key in env for word in ("PASSWORD", "SECRET_ACCESS")), (
        "no secret value in the ConfigMap"
    )


def test_redis_mode_points_keys_and_rate_limits_at_the_secret() -> None:
    manifests = render("redis-s3-ingress")
    env = settings(manifests)
    assert env["FRAMEWORM_API_KEY_STORE"] == "redis"
    assert env["FRAMEWORM_REDIS_URL_FILE"] == f"{SECRETS_DIR}/redis-url"
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == f"{SECRETS_DIR}/aws-credentials"
    assert not of_kind(manifests, "Secret"), "an existingSecret means no chart-made Secret"
    volumes = {v["name"]: v for v in server_pod_spec(manifests)["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "frameworm-secrets"


def test_the_default_keeps_hashed_api_keys_in_the_secret() -> None:
    env = settings(render("default"))
    assert env["FRAMEWORM_API_KEY_STORE"] == "hashed-file"
    assert env["FRAMEWORM_API_KEYS_FILE"] == f"{SECRETS_DIR}/api-keys.json"


def test_the_chart_made_secret_keeps_a_given_pepper_and_never_loses_it() -> None:
    pepper = "p" * 40
    secret = one(render_values({"secrets": {"apiKeyPepper": pepper}}), "Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert base64.b64decode(secret["data"]["api-key-pepper"]).decode() == pepper


@pytest.mark.parametrize(
    ("values_set", "source"),
    [("default", "image"), ("redis-s3-ingress", "s3Pull"), ("prestop", "pvc")],
)
def test_the_registry_comes_from_the_chosen_source(values_set: str, source: str) -> None:
    manifests = render(values_set)
    spec = server_pod_spec(manifests)
    volumes = {v["name"]: v for v in spec["volumes"]}
    init = {c["name"]: c for c in spec.get("initContainers", [])}
    assert settings(manifests)["FRAMEWORM_REGISTRY"] == "/var/lib/frameworm/registry"
    if source == "pvc":
        assert "persistentVolumeClaim" in volumes["registry"]
        assert not init
    else:
        assert "emptyDir" in volumes["registry"]
    if source == "image":
        assert init["registry-seed"]["command"][0] == "cp"
    if source == "s3Pull":
        # The served model with its stages: another model's damaged index must not stop it.
        assert init["registry-pull"]["args"] == [
            "registry",
            "pull",
            settings(manifests)["FRAMEWORM_MODEL"],
            "--stages",
            "--from",
            "s3://models/frameworm",
        ]


def test_reading_the_registry_straight_from_s3_needs_no_volume() -> None:
    manifests = render_values({"registry": {"source": "s3", "s3Uri": "s3://b/p"}})
    assert settings(manifests)["FRAMEWORM_REGISTRY"] == "s3://b/p"
    assert "registry" not in {v["name"] for v in server_pod_spec(manifests)["volumes"]}


def test_gpu_values_request_a_gpu_and_select_cuda() -> None:
    manifests = render("gpu")
    container = server_container(manifests)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert settings(manifests)["FRAMEWORM_DEVICE"] == "cuda"
    spec = server_pod_spec(manifests)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    default = server_container(render("default"))
    assert "nvidia.com/gpu" not in default["resources"]["limits"]


def test_the_ingress_matches_the_body_cap_and_trusts_only_the_controller() -> None:
    manifests = render("redis-s3-ingress")
    annotations = one(manifests, "Ingress")["metadata"]["annotations"]
    env = settings(manifests)
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "25m"
    assert float(env["FRAMEWORM_MAX_BODY_MB"]) == 25
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 30
    assert "client_body_timeout 30s;" in annotations["nginx.ingress.kubernetes.io/server-snippet"]
    assert env["FRAMEWORM_FORWARDED_ALLOW_IPS"] == "10.42.0.0/16"
    assert one(manifests, "Ingress")["spec"]["tls"][0]["secretName"] == "infer-example-tls"
    assert settings(render("default"))["FRAMEWORM_FORWARDED_ALLOW_IPS"] == "127.0.0.1"


def test_the_rollout_replaces_the_deployment_and_is_what_hpa_and_pdb_target() -> None:
    manifests = render("rollout")
    assert not of_kind(manifests, "Deployment")
    rollout = one(manifests, "Rollout")
    target = one(manifests, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "name": "fw-frameworm",
    }
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == rollout["spec"]["selector"]["matchLabels"]
    canary = rollout["spec"]["strategy"]["canary"]
    weights = [s["setWeight"] for s in canary["steps"] if "setWeight" in s]
    assert weights == [5, 25, 50, 100]
    assert canary["steps"][0] == {"setCanaryScale": {"replicas": 1}}
    assert canary["steps"][2] == {"pause": {"duration": "30m"}}
    # One canary pod for the first weight only: kept, it would take 25%, 50%, then everything.
    assert canary["steps"][3] == {"setCanaryScale": {"matchTrafficWeight": True}}
    assert canary["steps"][4] == {"setWeight": 25}
    assert canary["trafficRouting"] == {"nginx": {"stableIngress": "fw-frameworm"}}
    services = {s["metadata"]["name"] for s in of_kind(manifests, "Service")}
    assert {canary["stableService"], canary["canaryService"]} <= services
    assert "replicas" not in rollout["spec"], "the HPA owns the replica count"


def test_the_analysis_aborts_on_one_percent_errors_or_half_a_second_p99() -> None:
    manifests = render("rollout")
    template = one(manifests, "AnalysisTemplate")
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    # The full Successful / Failed / Inconclusive semantics: test_chart_operability.py.
    assert metrics["error-ratio"]["failureCondition"] == "len(result) == 1 && result[0] > 0.01"
    assert metrics["latency-p99"]["failureCondition"] == "len(result) == 1 && result[0] > 0.5"
    for metric in metrics.values():
        prometheus = metric["provider"]["prometheus"]
        assert prometheus["address"] == "http://prometheus.monitoring.svc:9090"
        assert 'rollouts_pod_template_hash="{{args.canary-hash}}"' in prometheus["query"]
    analysis = one(manifests, "Rollout")["spec"]["strategy"]["canary"]["analysis"]
    assert analysis["templates"] == [{"templateName": template["metadata"]["name"]}]
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["spec"]["podTargetLabels"] == ["rollouts-pod-template-hash"]


def test_steps_that_set_their_own_canary_scale_are_left_as_given() -> None:
    """The chart's reset went in after the user's own {replicas: 3} and cancelled it."""
    overrides = values("rollout")
    own = [
        {"setWeight": 5},
        {"pause": {}},
        {"setCanaryScale": {"replicas": 3}},
        {"setWeight": 25},
        {"pause": {}},
        {"setWeight": 100},
    ]
    overrides["rollout"]["steps"] = own
    rollout = one(render_values(overrides), "Rollout")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    assert steps == [{"setCanaryScale": {"replicas": 1}}, *own]


def test_steps_are_rendered_as_given_without_an_explicit_canary_scale() -> None:
    overrides = values("rollout")
    overrides["rollout"]["setCanaryScale"] = {"matchTrafficWeight": True}
    rollout = one(render_values(overrides), "Rollout")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    assert steps[0] == {"setCanaryScale": {"matchTrafficWeight": True}}
    assert steps[1:] == [
        {"setWeight": 5},
        {"pause": {"duration": "30m"}},
        {"setWeight": 25},
        {"pause": {"duration": "30m"}},
        {"setWeight": 50},
        {"pause": {"duration": "30m"}},
        {"setWeight": 100},
    ]


@pytest.mark.parametrize(
    "monitoring",
    [
        {},  # the ServiceMonitor and the rules, on by default
        {"serviceMonitor": {"enabled": False}},  # the rules alone
        {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
    ],
)
@pytest.mark.parametrize("off", [False, 0, "0", "False", "off", "no"])  # as the app reads them
def test_monitoring_without_the_app_s_metrics_is_refused(
    monitoring: dict[str, object], off: object
) -> None:
    """Every scrape of a /metrics the app does not serve fails: TargetDown and Absent fire for
    good (and with a rollout, every canary measurement is Inconclusive)."""
    overrides: dict[str, Any] = {"settings": {"metricsEnabled": off}, "monitoring": monitoring}
    if monitoring.get("prometheusRule") is not None:
        overrides = values("rollout") | overrides  # the analysis reads them
    with pytest.raises(helm.HelmError, match="metricsEnabled"):
        render_values(overrides)


def test_metrics_off_with_no_monitoring_renders() -> None:
    off = {"enabled": False}
    overrides = {
        "settings": {"metricsEnabled": False},
        "monitoring": {"serviceMonitor": off, "prometheusRule": off},
    }
    assert settings(render_values(overrides))["FRAMEWORM_METRICS_ENABLED"] == "false"


def test_set_canary_scale_without_traffic_routing_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="setCanaryScale"):
        render_values({"rollout": {"enabled": True, "setCanaryScale": {"replicas": 1}}})


def test_the_prometheus_rule_embeds_the_checked_rules_file() -> None:
    rule = one(render("default"), "PrometheusRule")
    source = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    # ... but for the absent alert, scoped to the release's namespace and labelled with it.
    for group in source["groups"]:
        for alert in group["rules"]:
            if alert["alert"] == "FramewormAbsent":
                alert["expr"] = f'absent(up{{job="frameworm", namespace="{NAMESPACE}"}} == 1)'
                alert["labels"]["namespace"] = NAMESPACE
    assert rule["spec"] == source
    custom = render_values(
        {"monitoring": {"prometheusRule": {"runbookBaseUrl": "https://runbooks.example/fw"}}}
    )
    urls = [
        r["annotations"]["runbook_url"]
        for g in one(custom, "PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
    ]
    assert urls and all(u.startswith("https://runbooks.example/fw#frameworm") for u in urls)


def test_the_dashboard_configmap_carries_the_sidecar_label_and_valid_json() -> None:
    manifests = render("default")
    dashboard = next(
        c for c in of_kind(manifests, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    ((key, text),) = dashboard["data"].items()
    assert key.startswith("frameworm-") and key.endswith(".json")
    model = json.loads(text)
    assert model["templating"]["list"][0]["type"] == "datasource"
    exprs = " ".join(t["expr"] for p in model["panels"] for t in p["targets"])
    for metric in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "frameworm_batch_size",
        "frameworm_queue_depth",
        "frameworm_gpu_utilization_ratio",
        "frameworm_gpu_memory_used_bytes",
        "frameworm_model_info",
    ):
        assert metric in exprs, metric
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs


def test_pagerduty_routing_reads_its_key_from_a_secret() -> None:
    config = one(render("rollout"), "AlertmanagerConfig")
    receiver = config["spec"]["receivers"][0]["pagerdutyConfigs"][0]
    assert receiver["routingKey"] == {"name": "pagerduty", "key": "routing-key"}
    assert config["spec"]["route"]["matchers"] == [
        {"name": "severity", "value": "critical", "matchType": "="}
    ]


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_helm_test_runs_frameworm_smoke_with_the_bootstrap_key(values_set: str) -> None:
    jobs = [
        j
        for j in of_kind(render(values_set), "Job")
        if j["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    assert len(jobs) == 1
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "smoke"
    assert container["args"][1:] == [
        "http://fw-frameworm.ml.svc:80",
        "--api-key",
        "$(SMOKE_API_KEY)",
    ]
    key = container["env"][1]["valueFrom"]["secretKeyRef"]
    assert key["key"] == "bootstrap-api-key"


def test_the_backup_cronjob_pushes_the_pvc_registry_to_s3() -> None:
    cronjob = one(render("prestop"), "CronJob")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [
        "registry",
        "push",
        "--all",
        "--to",
        "s3://backups/frameworm-registry",
    ]
    # The S3 copies it checks are downloaded into a volume of their own, not the small /tmp.
    assert {"name": "XDG_CACHE_HOME", "value": "/var/cache/frameworm"} in container["env"]
    assert {"name": "cache", "mountPath": "/var/cache/frameworm"} in container["volumeMounts"]
    volumes = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}} in volumes
    with pytest.raises(helm.HelmError, match=r"registry\.source=pvc"):
        render_values({"backup": {"enabled": True, "s3Uri": "s3://b/p"}})


def test_the_network_policy_admits_the_test_pods_and_restricts_egress_when_asked() -> None:
    default = one(render("default"), "NetworkPolicy")
    assert default["spec"]["policyTypes"] == ["Ingress"]
    peers = default["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"frameworm.io/client-of": "fw-frameworm"}}} in peers
    smoke = one(render("default"), "Job")["spec"]["template"]["metadata"]["labels"]
    assert smoke["frameworm.io/client-of"] == "fw-frameworm"
    restricted = one(render("redis-s3-ingress"), "NetworkPolicy")
    assert restricted["spec"]["policyTypes"] == ["Ingress", "Egress"]


def _manifest_names(manifests: list[Manifest]) -> list[str]:
    return [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_no_two_objects_share_a_kind_and_name(values_set: str) -> None:
    names = _manifest_names(render(values_set))
    assert len(names) == len(set(names))


# ------------------------------------------------------------ /metrics behind an Ingress


def _metrics_authorization(manifests: list[Manifest]) -> dict[str, Any] | None:
    endpoint = one(manifests, "ServiceMonitor")["spec"]["endpoints"][0]
    authorization: dict[str, Any] | None = endpoint.get("authorization")
    return authorization


@pytest.mark.parametrize("overrides", [{}, {"ingress": {"enabled": True}}])
def test_the_chart_made_secret_always_protects_metrics(overrides: dict[str, Any]) -> None:
    """The Ingress routes / to the Service: /metrics must want a token, generated by default."""
    manifests = render_values(overrides)
    token = base64.b64decode(one(manifests, "Secret")["data"]["metrics-token"]).decode()
    assert len(token) >= 32 and token.strip() == token
    assert settings(manifests)["FRAMEWORM_METRICS_TOKEN_FILE"] == f"{SECRETS_DIR}/metrics-token"
    assert _metrics_authorization(manifests) == {
        "type": "Bearer",
        "credentials": {"name": "fw-frameworm", "key": "metrics-token"},
    }


def test_a_given_metrics_token_is_the_one_the_secret_holds() -> None:
    token = "given-token-0123456789abcdef0123456789"
    manifests = render_values({"secrets": {"metricsToken": token}})
    data = one(manifests, "Secret")["data"]
    assert base64.b64decode(data["metrics-token"]).decode() == token


def test_a_metrics_token_the_app_would_refuse_in_production_fails_the_render() -> None:
    with pytest.raises(helm.HelmError, match="metricsToken is shorter than 32"):
        render_values({"secrets": {"metricsToken": "short-token"}})
    # Outside production the app takes it, and so does the chart.
    render_values({"secrets": {"metricsToken": "short-token"}, "settings": {"env": "development"}})


def test_an_existing_secret_without_a_metrics_token_is_refused_behind_an_ingress() -> None:
    existing = {"secrets": {"existingSecret": "mine"}}
    with pytest.raises(helm.HelmError, match=r"metrics-token.*allowPublicMetrics"):
        render_values({**existing, "ingress": {"enabled": True}})
    # Inside the cluster only, an existingSecret without the key keeps /metrics open as before.
    inside = render_values(existing)
    assert "FRAMEWORM_METRICS_TOKEN_FILE" not in settings(inside)
    assert _metrics_authorization(inside) is None
    # Saying so explicitly serves /metrics publicly.
    public = render_values({**existing, "ingress": {"enabled": True, "allowPublicMetrics": True}})
    assert "FRAMEWORM_METRICS_TOKEN_FILE" not in settings(public)
    listed = render_values(
        {
            "secrets": {"existingSecret": "mine", "existingSecretKeys": ["metrics-token"]},
            "ingress": {"enabled": True},
        }
    )
    assert settings(listed)["FRAMEWORM_METRICS_TOKEN_FILE"] == f"{SECRETS_DIR}/metrics-token"
    assert _metrics_authorization(listed) == {
        "type": "Bearer",
        "credentials": {"name": "mine", "key": "metrics-token"},
    }


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_no_values_set_serves_metrics_publicly(values_set: str) -> None:
    manifests = render(values_set)
    if of_kind(manifests, "Ingress"):
        assert "FRAMEWORM_METRICS_TOKEN_FILE" in settings(manifests)
        assert _metrics_authorization(manifests) is not None


def test_the_generated_secrets_warn_gitops_users() -> None:
    """Without a cluster to look up (helm template, Argo CD, --dry-run), generated values
    change on every render; values.yaml must say so and what to do."""
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    index = lines.index("secrets:")
    comment = " ".join(
        line.lstrip("# ") for line in lines[index - 8 : index] if line.startswith("#")
    )
    for words in ("helm template", "Argo CD", "--dry-run", "EVERY render", "existingSecret"):
        assert words in comment, words
    for value in ("apiKeyPepper", "bootstrapApiKey", "metricsToken"):
        assert value in comment, value


@pytest.mark.parametrize(
    ("values_", "reason"),
    [
        ({"secrets": {"apiKeyPepper": "short-pepper"}}, "secrets.apiKeyPepper is shorter"),
        ({"secrets": {"bootstrapApiKey": "fw_short"}}, "secrets.bootstrapApiKey is shorter"),
        # As the app reads a mounted secret: stripped (a file's newline), in characters.
        ({"secrets": {"metricsToken": "t" * 31 + "\n"}}, "secrets.metricsToken is shorter"),
        ({"secrets": {"apiKeyPepper": "é" * 16}}, "secrets.apiKeyPepper is shorter"),
        ({"settings": {"authEnabled": False}}, "settings.authEnabled is false"),
        ({"settings": {"enableDocs": True}}, "settings.enableDocs is true"),
        # As pydantic reads them; and whatever Secret the pods read their keys from.
        ({"settings": {"authEnabled": "off"}}, "settings.authEnabled is false"),
        ({"settings": {"enableDocs": "Yes"}}, "settings.enableDocs is true"),
        (
            {"secrets": {"existingSecret": "mine"}, "settings": {"authEnabled": False}},
            "settings.authEnabled is false",
        ),
        # The app refuses several workers counting rate limits each in its own memory.
        ({"settings": {"workers": 2}}, "settings.workers=2 count rate limits each"),
        (
            {"settings": {"workers": "3", "rateLimitStorage": "memory://"}},
            "settings.workers=3 count rate limits each",
        ),
    ],
)
def test_values_the_app_refuses_in_production_fail_the_render(
    values_: dict[str, Any], reason: str
) -> None:
    """They rendered, and every pod then exited at start: CrashLoopBackOff."""
    with pytest.raises(helm.HelmError, match=re.escape(reason)):
        render_values(values_)
    development = values_.get("settings", {}) | {"env": "development"}
    render_values({**values_, "settings": development})


@pytest.mark.parametrize(
    "shared",
    [
        {"settings": {"rateLimitEnabled": "false"}},
        {"settings": {"rateLimitStorage": "rediss://limits.example:6380/0"}},
        {
            "redis": {"enabled": True, "rateLimits": True},
            "secrets": {"redisUrl": "redis://redis.example:6379/0"},
        },
    ],
)
def test_several_workers_render_when_their_rate_limits_are_shared_or_off(
    shared: dict[str, Any],
) -> None:
    settings_ = {"workers": 2, **shared.get("settings", {})}
    render_values({**shared, "settings": settings_})


def test_empty_ingress_settings_give_the_proxy_the_app_s_defaults() -> None:
    """Left out of the ConfigMap, so the app used 10 MB, 10 s and 30 s, while the ingress read
    them as 0: no body limit, a 5 s proxy timeout, a 0 s body timeout."""
    empty = {"maxBodyMb": "", "requestTimeoutMs": None, "bodyTimeoutS": ""}
    values_ = {"ingress": {"enabled": True}, "settings": empty}
    annotations = one(render_values(values_), "Ingress")["metadata"]["annotations"]
    defaults = one(render_values({"ingress": {"enabled": True}}), "Ingress")["metadata"]
    assert annotations == defaults["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "10m"


def test_whole_numbers_of_a_million_or_more_are_written_as_integers() -> None:
    """Helm's float64 made 4000000 "4e+06", which an integer setting refuses at start."""
    big = {"maxQueueItems": 1_000_000, "maxJsonElements": 4_000_000, "maxBodyMb": 2.5}
    manifests = render_values({"settings": big})
    env = settings(manifests)
    assert env["FRAMEWORM_MAX_QUEUE_ITEMS"] == "1000000"
    assert env["FRAMEWORM_MAX_JSON_ELEMENTS"] == "4000000"
    assert env["FRAMEWORM_MAX_BODY_MB"] == "2.5"
    # As the app reads them from the environment: strings.
    read = Settings(
        _env_file=None,
        env="development",
        max_queue_items=env["FRAMEWORM_MAX_QUEUE_ITEMS"],
        max_json_elements=env["FRAMEWORM_MAX_JSON_ELEMENTS"],
    )
    assert (read.max_queue_items, read.max_json_elements) == (1_000_000, 4_000_000)


def test_a_rollout_without_the_service_monitor_is_refused() -> None:
    """The analysis reads the canary by a label only the ServiceMonitor adds: every release
    would have paused at its first step, every measurement Inconclusive."""
    values_ = {"rollout": {"enabled": True}, "monitoring": {"serviceMonitor": {"enabled": False}}}
    with pytest.raises(helm.HelmError, match="serviceMonitor"):
        render_values(values_)


def _names(manifest: Manifest) -> Iterator[tuple[str, str]]:
    """(what, name) for the manifest's name and every label key's name part."""
    yield manifest["kind"], manifest["metadata"]["name"]
    template = manifest.get("spec", {}).get("template", {})
    selectors = [
        peer.get("podSelector", {}).get("matchLabels", {})
        for rule in manifest.get("spec", {}).get("ingress", [])
        for peer in rule.get("from", [])
    ]
    for labels in (
        manifest["metadata"].get("labels", {}),
        template.get("metadata", {}).get("labels", {}),
        *selectors,
    ):
        for key in labels or {}:
            yield f"{manifest['kind']} label", key.rsplit("/", 1)[-1]


def test_long_names_are_cut_to_what_kubernetes_accepts() -> None:
    """Suffixes (-metrics, -canary, -registry-backup) were added after the cut to 63."""
    everything = {
        "fullnameOverride": "f" * 63,
        "rollout": {"enabled": True, "trafficRouting": {"nginx": {"enabled": True}}},
        "ingress": {"enabled": True, "hosts": [{"host": "a.example", "paths": [{"path": "/"}]}]},
        "networkPolicy": {"enabled": True},
        "backup": {"enabled": True, "s3Uri": "s3://bucket/prefix"},
        "registry": {"source": "pvc", "pvc": {"accessModes": ["ReadWriteMany"]}},
    }
    manifests = render_values(everything)
    assert {"CronJob", "Service", "AnalysisTemplate", "NetworkPolicy"} <= {
        m["kind"] for m in manifests
    }
    for manifest in manifests:
        for what, name in _names(manifest):
            limit = 52 if what == "CronJob" else 63
            assert len(name) <= limit, (what, name)


@pytest.mark.parametrize(
    "values_",
    [
        {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}},
        {
            "autoscaling": {"enabled": True, "minReplicas": 1},
            "podDisruptionBudget": {"minAvailable": 1},
        },
        {"podDisruptionBudget": {"minAvailable": "100%"}},
        {"podDisruptionBudget": {"maxUnavailable": 0}},
        # Kubernetes rounds percentages up: 50% of one pod is that pod, 60% of two is both.
        {
            "autoscaling": {"enabled": True, "minReplicas": 1},
            "podDisruptionBudget": {"minAvailable": "50%"},
        },
        {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": "60%"}},
        {"replicaCount": 2, "podDisruptionBudget": {"minAvailable": "2"}},
        {"podDisruptionBudget": {"maxUnavailable": "0%"}},
    ],
)
def test_a_disruption_budget_that_allows_no_eviction_is_refused(values_: dict[str, Any]) -> None:
    """kubectl drain waited forever on these pods."""
    with pytest.raises(helm.HelmError, match="allows no voluntary eviction"):
        render_values(values_)


@pytest.mark.parametrize(
    "values_",
    [
        {"replicaCount": 3, "podDisruptionBudget": {"minAvailable": "50%"}},
        {"replicaCount": 1, "podDisruptionBudget": {"maxUnavailable": "1%"}},
        {"replicaCount": 0, "podDisruptionBudget": {"minAvailable": 0}},
    ],
)
def test_a_disruption_budget_that_allows_an_eviction_renders(values_: dict[str, Any]) -> None:
    render_values(values_)


def test_a_disruption_budget_below_the_replica_count_renders() -> None:
    pdb = one(
        render_values({"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}}),
        "PodDisruptionBudget",
    )
    assert pdb["spec"]["minAvailable"] == 2
