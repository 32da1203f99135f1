"""API-key auth of a running `frameworm serve`: no way around it, and nothing leaks.

One server with auth on (file key store, a metrics token, a bootstrap key from the
environment, 5 failed authentications a minute per address) serves most tests; a second,
fresh development server with no key at all prints its bootstrap key. Keys are made and
revoked with the real `frameworm keys` CLI while the servers run. Each refused request sends
its own X-Forwarded-For, so the per-address failure budget is only spent where a test means to.
"""

from __future__ import annotations

import base64
import http.client
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.hardened import (
    TEST_PEPPER,
    HardenedServer,
    digit_document,
    hardened_env,
    model_work,
    run_frameworm,
    starting_servers,
    unique_address,
    v2_document,
    wait_all_ready,
)

METRICS_TOKEN = "metrics-token-for-tests"
BOOTSTRAP_KEY = "bootstrap-key-from-the-environment-0123456789"
METRICS = {"authorization": f"Bearer {METRICS_TOKEN}"}
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}
REVOCATION_BOUND_S = 5.0


@dataclass
class Keys:
    valid: str
    admin_only: str
    to_revoke: tuple[str, str]
    expired: str
    expired_by: float


@dataclass
class Auth:
    server: HardenedServer
    fresh: HardenedServer
    keys: Keys

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Auth]:
    root = tmp_path_factory.mktemp("auth")
    configs: dict[str, dict[str, str | None]] = {
        "main": {
            "FRAMEWORM_AUTH_FAILURE_LIMIT": "5/minute",
            "FRAMEWORM_METRICS_TOKEN": METRICS_TOKEN,
            "FRAMEWORM_BOOTSTRAP_API_KEY": BOOTSTRAP_KEY,
        },
        # README's first run: development, no key and no pepper, so both are generated.
        "fresh": {"FRAMEWORM_API_KEY_PEPPER": None},
    }
    with starting_servers(root, configs) as servers:
        keys = make_keys(servers["main"])  # while the servers load their model
        wait_all_ready(servers)
        time.sleep(max(0.0, keys.expired_by - time.time()))
        yield Auth(servers["main"], servers["fresh"], keys)


def make_keys(server: HardenedServer) -> Keys:
    """The scoped and the expiring key through the real CLI (in parallel), the rest in-process."""
    with ThreadPoolExecutor(2) as pool:
        admin = pool.submit(server.create_key, "ops", "--scope", "admin")
        expired = pool.submit(server.create_key, "bob", "--expires-in", "1s")
        valid, doomed = server.add_key("alice"), server.add_key("mallory")
        expired_key = expired.result()[1]
        expired_by = time.time() + 1.0
        doomed_id = doomed.split("_")[1]
        return Keys(valid, admin.result()[1], (doomed_id, doomed), expired_key, expired_by)


@pytest.fixture(scope="module")
def client(auth: Auth) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=auth.url, timeout=10) as client:
        yield client


def assert_security_headers(response: httpx.Response | http.client.HTTPResponse) -> None:
    headers = {k.lower(): v for k, v in response.headers.items()}
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (name, headers)
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "server" not in headers


def failures_by_reason(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics", headers=METRICS).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "frameworm_auth_failures_total"
    }


# -- what a request without a valid key may try ---------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, Any] | None


ROUTES = {
    "infer": Route("POST", "/infer", digit_document()),
    "v2-infer": Route("POST", "/v2/models/cnn-digits/infer", v2_document()),
    "v2-metadata": Route("GET", "/v2/models/cnn-digits", None),
}


def send(
    auth: Auth,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
) -> tuple[int, dict[str, str], bytes]:
    """Sends the path byte for byte (httpx would normalise `/./` and `%2e%2e`)."""
    connection = http.client.HTTPConnection("127.0.0.1", auth.server.port, timeout=10)
    try:
        payload = orjson.dumps(body) if body is not None else None
        all_headers = {**unique_address(), **headers}
        if payload is not None:
            all_headers.setdefault("content-type", "application/json")
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        assert_security_headers(response)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def credentials(auth: Auth, case: str) -> tuple[dict[str, str], str]:
    """(headers, query) for each way of not presenting a valid key."""
    valid, keys = auth.keys.valid, auth.keys
    prefix, key_id, secret = valid.split("_", 2)
    basic = base64.b64encode(f"{valid}:".encode()).decode()
    return {
        "missing": ({}, ""),
        "empty": ({"x-api-key": ""}, ""),
        "malformed": ({"x-api-key": "not-a-key"}, ""),
        "unknown-id": ({"x-api-key": f"{prefix}_{'0' * 16}_{secret}"}, ""),
        "wrong-secret": ({"x-api-key": f"{prefix}_{key_id}_{'A' * len(secret)}"}, ""),
        "expired": ({"x-api-key": keys.expired}, ""),
        "query-api-key": ({}, f"?api_key={valid}"),
        "query-key": ({}, f"?key={valid}"),
        "cookie": ({"cookie": f"api_key={valid}; x-api-key={valid}"}, ""),
        "basic": ({"authorization": f"Basic {basic}"}, ""),
        "bearer-without-scheme": ({"authorization": valid}, ""),
    }[case]


CREDENTIAL_CASES = [
    "missing",
    "empty",
    "malformed",
    "unknown-id",
    "wrong-secret",
    "expired",
    "query-api-key",
    "query-key",
    "cookie",
    "basic",
    "bearer-without-scheme",
]
REASONS = {
    "missing": "missing",
    "empty": "missing",
    "malformed": "malformed",
    "unknown-id": "unknown",
    "wrong-secret": "bad_secret",
    "expired": "expired",
    "query-api-key": "missing",
    "query-key": "missing",
    "cookie": "missing",
    "basic": "missing",
    "bearer-without-scheme": "missing",
}
PATH_TRICKS = {
    "double-slash": ("POST", "//infer"),
    "trailing-slash": ("POST", "/infer/"),
    "percent-encoded": ("POST", "/%69nfer"),
    "dot-segment": ("POST", "/./infer"),
    "dot-dot": ("POST", "/v2/models/../models/cnn-digits/infer"),
    "encoded-dot-dot": ("POST", "/v2/models/%2e%2e/models/cnn-digits/infer"),
    "public-prefix": ("POST", "/v2/health/live/../../models/cnn-digits/infer"),
    "encoded-public-prefix": ("POST", "/v2/health/%2e%2e/models/cnn-digits/infer"),
    "probe-lookalike": ("GET", "/healthz/../v2/models/cnn-digits"),
    "head": ("HEAD", "/v2/models/cnn-digits"),
    "options": ("OPTIONS", "/infer"),
    "model-ready": ("GET", "/v2/models/cnn-digits/ready"),
    "docs": ("GET", "/openapi.json"),
}


def expected_401(path: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "urn:frameworm:problem:unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": "a valid API key is required",
        "code": "unauthorized",
    }
    if path == "/v2" or path.startswith("/v2/"):
        body["error"] = body["detail"]
    return body


def assert_uniform_401(status: int, headers: dict[str, str], body: bytes, path: str) -> None:
    assert status == 401, body
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers["content-type"] == "application/problem+json"
    document = orjson.loads(body)
    assert document.pop("request_id") == headers["x-request-id"]
    assert document == expected_401(path.split("?")[0])


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("case", CREDENTIAL_CASES)
def test_a_request_without_a_valid_key_gets_the_same_401_and_never_reaches_the_model(
    auth: Auth, client: httpx.Client, route: str, case: str
) -> None:
    target = ROUTES[route]
    headers, query = credentials(auth, case)
    work, reasons = model_work(client, METRICS), failures_by_reason(client)
    status, response_headers, body = send(
        auth, target.method, target.path + query, target.body, headers
    )
    assert_uniform_401(status, response_headers, body, target.path)
    assert model_work(client, METRICS) == work
    reason = REASONS.get(case)
    if reason is not None:
        assert failures_by_reason(client).get(reason, 0) == reasons.get(reason, 0) + 1


@pytest.mark.parametrize("trick", sorted(PATH_TRICKS))
def test_no_spelling_of_a_protected_path_or_method_gets_past_auth(
    auth: Auth, client: httpx.Client, trick: str
) -> None:
    method, path = PATH_TRICKS[trick]
    body = digit_document() if method == "POST" else None
    work = model_work(client, METRICS)
    status, headers, raw = send(auth, method, path, body, {})
    assert status == 401, raw
    assert headers["www-authenticate"].startswith("Bearer")
    if method != "HEAD":
        assert_uniform_401(status, headers, raw, path)
    assert model_work(client, METRICS) == work


def test_a_key_revoked_through_the_cli_is_refused_within_seconds(
    auth: Auth, client: httpx.Client
) -> None:
    key_id, key = auth.keys.to_revoke
    assert client.post("/infer", json=digit_document(), headers={"x-api-key": key}).is_success
    revoked = auth.server.keys("revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    deadline = time.monotonic() + REVOCATION_BOUND_S
    while True:
        status, headers, body = send(auth, "POST", "/infer", digit_document(), {"x-api-key": key})
        if status != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert_uniform_401(status, headers, body, "/infer")
    work = model_work(client, METRICS)
    status, headers, body = send(auth, "POST", "/infer", digit_document(), {"x-api-key": key})
    assert_uniform_401(status, headers, body, "/infer")
    assert model_work(client, METRICS) == work
    assert failures_by_reason(client).get("revoked", 0) >= 1


def test_a_key_without_the_infer_scope_gets_403_and_no_model_work(
    auth: Auth, client: httpx.Client
) -> None:
    work = model_work(client, METRICS)
    for route in ROUTES.values():
        status, headers, body = send(
            auth, route.method, route.path, route.body, {"x-api-key": auth.keys.admin_only}
        )
        assert status == 403, body
        assert headers["content-type"] == "application/problem+json"
        assert orjson.loads(body)["code"] == "forbidden"
    assert model_work(client, METRICS) == work


@pytest.mark.parametrize("scheme", ["x-api-key", "bearer", "lowercase-bearer"])
def test_a_valid_key_works_as_x_api_key_and_as_a_bearer_token(
    auth: Auth, client: httpx.Client, scheme: str
) -> None:
    key = auth.keys.valid
    headers = {
        "x-api-key": {"x-api-key": key},
        "bearer": {"authorization": f"Bearer {key}"},
        "lowercase-bearer": {"authorization": f"bearer {key}"},
    }[scheme]
    work = model_work(client, METRICS)
    response = client.post("/infer", json=digit_document(3), headers=headers)
    assert response.status_code == 200, response.text
    assert max(range(10), key=lambda i: response.json()["outputs"]["probabilities"][0][i]) == 3
    assert client.get("/v2/models/cnn-digits", headers=headers).status_code == 200
    assert client.post(
        "/v2/models/cnn-digits/infer", json=v2_document(), headers=headers
    ).is_success
    assert model_work(client, METRICS) > work


def test_the_bootstrap_key_from_the_environment_works(client: httpx.Client) -> None:
    response = client.post("/infer", json=digit_document(), headers={"x-api-key": BOOTSTRAP_KEY})
    assert response.status_code == 200, response.text


def test_a_fresh_development_server_prints_a_bootstrap_key_that_works_end_to_end(
    auth: Auth,
) -> None:
    printed = [w for w in auth.fresh.stderr().split() if w.startswith("fw_")]
    assert printed, auth.fresh.stderr()
    key = printed[0]
    with httpx.Client(base_url=auth.fresh.url, timeout=10) as client:
        unauthenticated = client.post("/infer", json=digit_document(7))
        response = client.post("/infer", json=digit_document(7), headers={"X-API-Key": key})
    assert unauthenticated.status_code == 401
    assert response.status_code == 200, response.text
    assert max(range(10), key=lambda i: response.json()["outputs"]["probabilities"][0][i]) == 7
    assert key not in auth.fresh.stdout()
    secret = key.split("_", 2)[2]
    assert secret not in auth.fresh.stdout()


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"FRAMEWORM_API_KEY_PEPPER": None}, "pepper"),
        ({"FRAMEWORM_AUTH_ENABLED": "false"}, "auth"),
    ],
    ids=["without-a-pepper", "with-auth-off"],
)
def test_a_production_server_refuses_to_start_with_unsafe_settings(
    tmp_path: Path, overrides: dict[str, str | None], names: str
) -> None:
    env = hardened_env(tmp_path, {"FRAMEWORM_ENV": "production", **overrides})
    result = run_frameworm(["serve"], env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "production" in lines[0]
    assert names in lines[0].lower()
    assert "Traceback" not in result.stderr + result.stdout


def test_repeated_failures_from_one_address_are_refused_with_429_but_a_valid_key_still_works(
    auth: Auth,
) -> None:
    address = unique_address()
    statuses = [
        send(auth, "POST", "/infer", None, {**address, "x-api-key": "nope"})[0] for _ in range(5)
    ]
    assert statuses == [401] * 5
    status, headers, body = send(auth, "POST", "/infer", None, {**address, "x-api-key": "nope"})
    assert status == 429, body
    assert int(headers["retry-after"]) >= 1
    assert headers["content-type"] == "application/problem+json"
    # A valid key from the same address (clients behind one NAT) is not locked out.
    status, _, body = send(
        auth, "POST", "/infer", digit_document(), {**address, "x-api-key": auth.keys.valid}
    )
    assert status == 200, body


def test_ipv6_addresses_of_one_64_share_one_budget_of_failures(auth: Auth) -> None:
    # One host usually holds its whole /64: a budget per address would be 2**64 budgets.
    prefix = "2001:db8:" + uuid.uuid4().hex[:4]
    statuses = [
        send(
            auth,
            "POST",
            "/infer",
            None,
            {"x-forwarded-for": f"{prefix}::{i + 1:x}", "x-api-key": "nope"},
        )[0]
        for i in range(6)
    ]
    assert statuses == [401] * 5 + [429]


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/v2", "/v2/health/live", "/v2/health/ready"]
)
def test_probes_and_the_server_metadata_need_no_key(client: httpx.Client, path: str) -> None:
    response = client.get(path, headers=unique_address())
    assert response.status_code == 200, response.text
    assert_security_headers(response)


def test_metrics_need_the_metrics_bearer_token(client: httpx.Client) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": BOOTSTRAP_KEY}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["content-type"] == "application/problem+json"
        assert "frameworm_" not in response.text
        assert_security_headers(response)
    response = client.get("/metrics", headers=METRICS)
    assert response.status_code == 200
    assert "frameworm_auth_failures_total" in response.text


def test_every_response_carries_the_security_headers_and_no_server_header(
    auth: Auth, client: httpx.Client
) -> None:
    key = {"x-api-key": auth.keys.valid}
    responses = [
        client.get("/healthz"),
        client.get("/metrics", headers=METRICS),
        client.post("/infer", json=digit_document(), headers=key),
        client.post("/infer", headers={**key, "content-type": "text/plain"}, content=b"x"),
        client.post("/infer", json={"inputs": {"image": [[0]]}}, headers=key),
        client.get("/nope", headers=key),
        client.delete("/infer", headers=key),
        client.post("/infer", headers=unique_address()),
        client.post("/infer", headers={"x-api-key": auth.keys.admin_only}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 415, 422, 404, 405, 401, 403]
    for response in responses:
        assert_security_headers(response)


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc"])
def test_the_docs_are_off_by_default_even_with_a_valid_key(
    auth: Auth, client: httpx.Client, path: str
) -> None:
    assert client.get(path, headers=unique_address()).status_code == 401
    assert client.get(path, headers={"x-api-key": auth.keys.valid}).status_code == 404


def test_no_key_appears_in_the_server_logs(auth: Auth) -> None:
    """After the module's other tests (run in file order, by one process): their keys, valid,
    wrong and revoked, went through this server."""
    deadline = time.monotonic() + 5  # access lines are written in batches
    while "authentication failed" not in (logs := auth.server.stdout() + auth.server.stderr()):
        assert time.monotonic() < deadline, "the log is there, and it was written to"
        time.sleep(0.05)
    keys = auth.keys
    for key in (keys.valid, keys.admin_only, keys.to_revoke[1], keys.expired):
        assert key not in logs
        assert key.split("_", 2)[2] not in logs  # the secret part
    assert BOOTSTRAP_KEY not in logs
    assert METRICS_TOKEN not in logs
    assert TEST_PEPPER not in logs
