"""Every error is redacted problem+json with the request id; every response has the headers."""

from __future__ import annotations

from typing import Any

import pytest

from app.middleware.context import SECURITY_HEADERS
from tests.integration.app.apps import AppClient

JSON = {"content-type": "application/json"}

# (method, path, options, status, code)
ERRORS: list[Any] = [
    pytest.param("GET", "/nope", {}, 404, "not-found", id="unknown-route"),
    pytest.param("GET", "/infer", {}, 405, "method-not-allowed", id="wrong-method"),
    pytest.param("DELETE", "/healthz", {}, 405, "method-not-allowed", id="wrong-method-probe"),
    pytest.param(
        "POST",
        "/infer",
        {"content": b"{", "headers": JSON},
        400,
        "malformed-request",
        id="malformed-json",
    ),
    pytest.param(
        "POST",
        "/infer",
        {"content": b"x", "headers": {"content-type": "text/csv"}},
        415,
        "unsupported-media-type",
        id="wrong-content-type",
    ),
    pytest.param(
        "POST",
        "/infer",
        {"json": {"inputs": {"image": "SECRET-INPUT-42"}}},
        422,
        "invalid-input",
        id="invalid-input",
    ),
    pytest.param("GET", "/v2/models/nope", {}, 404, "model-not-found", id="v2-unknown-model"),
    pytest.param(
        "POST",
        "/v2/models/cnn-digits/infer",
        {"content": b"[", "headers": JSON},
        400,
        "malformed-request",
        id="v2-malformed",
    ),
    pytest.param(
        "POST",
        "/v2/models/cnn-digits/infer",
        {"content": b"{}", "headers": {"inference-header-content-length": "99"}},
        400,
        "malformed-request",
        id="v2-bad-header-length",
    ),
]


@pytest.mark.parametrize(("method", "path", "options", "status", "code"), ERRORS)
def test_every_error_is_problem_json_with_the_request_id_of_the_response(
    cnn: AppClient, method: str, path: str, options: dict[str, Any], status: int, code: str
) -> None:
    response = cnn.request(method, path, **options)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:frameworm:problem:{code}"
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert ("error" in body) is path.startswith("/v2")


@pytest.mark.parametrize(("method", "path", "options", "status", "code"), ERRORS)
def test_no_error_body_carries_a_stack_trace_exception_text_or_the_input(
    cnn: AppClient, method: str, path: str, options: dict[str, Any], status: int, code: str
) -> None:
    text = cnn.request(method, path, **options).text
    for leak in ("Traceback", 'File "', "Error:", "Exception", "SECRET-INPUT-42", "/work/"):
        assert leak not in text


HUGE_NAME = "<script>" + "A" * 1_000_000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/infer", {HUGE_NAME: 1, "inputs": {}}),
        ("/infer", {"inputs": {f"{HUGE_NAME}{i}": [1] for i in range(3)}}),
        ("/infer", {"inputs": {}, "parameters": {f"p{i}": 1 for i in range(100_000)}}),
        ("/v2/models/cnn-digits/infer", {"inputs": [], HUGE_NAME: 1}),
    ],
    ids=["unknown-field", "unknown-inputs", "many-unknown-parameters", "v2-unknown-field"],
)
def test_an_error_names_what_the_client_sent_but_never_echoes_it_whole(
    cnn: AppClient, path: str, body: dict[str, Any]
) -> None:
    response = cnn.post(path, json=body)
    assert response.status_code == 422
    assert len(response.content) < 3000, len(response.content)
    detail = response.json()["detail"]
    assert "unknown" in detail and ("<script>AAA" in detail or "'p0'" in detail)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/infer", "POST"),
        ("PUT", "/healthz", "GET, HEAD"),  # GET and HEAD are two routes here
        ("DELETE", "/readyz", "GET, HEAD"),
        ("POST", "/v2/health/live", "GET, HEAD"),
        ("PUT", "/v2/models/cnn-digits/infer", "POST"),
    ],
)
def test_405_says_every_method_the_path_takes(
    cnn: AppClient, method: str, path: str, allow: str
) -> None:
    response = cnn.request(method, path)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == set(allow.split(", "))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v2"),
        ("GET", "/nope"),
        ("GET", "/infer"),
        ("POST", "/infer"),
        ("GET", "/v2/models/nope"),
    ],
)
def test_every_response_has_the_security_headers_and_no_server_header(
    cnn: AppClient, method: str, path: str
) -> None:
    response = cnn.request(method, path)
    for name, value in SECURITY_HEADERS:
        assert response.headers[name.decode()] == value.decode()
    assert "server" not in response.headers
    assert response.headers["x-request-id"]


def test_a_plain_client_request_id_is_echoed_in_header_and_body(cnn: AppClient) -> None:
    response = cnn.get("/nope", headers={"x-request-id": "trace-1234.abc:9"})
    assert response.headers["x-request-id"] == "trace-1234.abc:9"
    assert response.json()["request_id"] == "trace-1234.abc:9"


@pytest.mark.parametrize("request_id", ["has space", "x" * 129, "new\tline", "<script>"])
def test_an_unsafe_client_request_id_is_replaced(cnn: AppClient, request_id: str) -> None:
    response = cnn.get("/nope", headers={"x-request-id": request_id})
    assert response.headers["x-request-id"] != request_id
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_each_request_gets_its_own_id(cnn: AppClient) -> None:
    ids = {cnn.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_the_openapi_docs_are_off_by_default(cnn: AppClient) -> None:
    assert cnn.get("/docs").status_code == 404
    assert cnn.get("/openapi.json").status_code == 404
