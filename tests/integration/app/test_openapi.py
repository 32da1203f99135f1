"""The OpenAPI document says what the server does: bodies, credentials, parameters; /docs works."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from app.config import Settings
from app.main import PUBLIC_PATHS, create_app
from app.middleware.context import SECURITY_HEADERS
from tests.integration.app.apps import AppClient, app_settings, running_app

V2_INFER = ["/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"]
HEADER_LENGTH = "Inference-Header-Content-Length"
STRICT_CSP = dict(SECURITY_HEADERS)[b"content-security-policy"].decode()


def document(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"enable_docs": True, "auth_enabled": True, "seed_demo": False}
    values.update(overrides)
    return create_app(Settings(_env_file=None, **values)).openapi()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


@pytest.fixture(scope="module")
def docs(seeded_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppClient]:
    settings = app_settings(
        seeded_registry,
        enable_docs=True,
        auth_enabled=True,
        api_keys_file=tmp_path_factory.mktemp("keys") / "api-keys.json",
        api_key_pepper="p" * 40,
    )
    with running_app(settings) as client:
        yield client


@pytest.mark.parametrize("path", V2_INFER)
def test_v2_inference_documents_its_json_and_binary_bodies_both_ways(path: str) -> None:
    operation = document()["paths"][path]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json", "application/octet-stream"}
    schema = body["content"]["application/json"]["schema"]
    assert set(schema["properties"]) >= {"id", "inputs", "outputs", "parameters"}
    assert set(schema["properties"]["inputs"]["items"]["properties"]) == {
        "name",
        "shape",
        "datatype",
        "data",
        "parameters",
    }
    header = next(p for p in operation["parameters"] if p["name"] == HEADER_LENGTH)
    assert header["in"] == "header" and header["required"] is False
    ok = operation["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "application/octet-stream"}
    assert HEADER_LENGTH in ok["headers"]


def v2_schemas(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    operation = doc["paths"][V2_INFER[0]]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    return request, operation["responses"]["200"]["content"]["application/json"]["schema"]


TRITON_REQUEST = {
    "id": "r1",
    "model_name": "cnn-digits",
    "inputs": [
        {
            "name": "image",
            "shape": [1, 1, 28, 28],
            "datatype": "FP32",
            "data": np.zeros(784).tolist(),
            "parameters": {},
        }
    ],
    "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
    "parameters": {"binary_data_output": False, "timeout": 0},
}


def test_the_v2_json_schemas_match_what_the_server_reads_and_answers(cnn: AppClient) -> None:
    request_schema, response_schema = v2_schemas(document())
    jsonschema.validate(TRITON_REQUEST, request_schema)
    response = cnn.post("/v2/models/cnn-digits/infer", json=TRITON_REQUEST)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    jsonschema.validate(response.json(), response_schema)
    # A field the schema refuses, the server refuses too.
    unknown = {**TRITON_REQUEST, "sequence": 1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(unknown, request_schema)
    assert cnn.post("/v2/models/cnn-digits/infer", json=unknown).status_code == 422


def with_input(**fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = TRITON_REQUEST["inputs"][0]  # type: ignore[index]
    return {**TRITON_REQUEST, "inputs": [{**item, **fields}]}


@pytest.mark.parametrize(
    "request_",
    [
        with_input(contents={"fp32_contents": [0.0]}),
        with_input(parameters={"shared_memory_region": "region"}),
        {**TRITON_REQUEST, "parameters": {"priority": -1}},
        {**TRITON_REQUEST, "parameters": {"headers": {"x": 1}}},
        {**TRITON_REQUEST, "outputs": [{"name": "probabilities", "foo": 1}]},
    ],
)
def test_what_the_server_refuses_the_v2_schema_refuses(
    cnn: AppClient, request_: dict[str, Any]
) -> None:
    """These were valid by the document, and 422 from the server."""
    request_schema, _ = v2_schemas(document())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(request_, request_schema)
    assert cnn.post("/v2/models/cnn-digits/infer", json=request_).status_code == 422


@pytest.mark.parametrize(
    "request_",
    [
        {**TRITON_REQUEST, "id": None, "outputs": None, "parameters": None},
        {**TRITON_REQUEST, "parameters": {"headers": None, "timeout": None, "priority": None}},
        with_input(parameters=None),
        with_input(parameters={"binary_data_size": None}),
    ],
)
def test_nulls_the_server_reads_as_not_given_are_valid_by_the_schema(
    cnn: AppClient, request_: dict[str, Any]
) -> None:
    request_schema, _ = v2_schemas(document())
    jsonschema.validate(request_, request_schema)
    assert cnn.post("/v2/models/cnn-digits/infer", json=request_).status_code == 200


def test_a_v2_request_without_inputs_is_valid_for_a_generative_model(decoder: AppClient) -> None:
    """The document required `inputs`; a generative model draws them from its parameters."""
    request_schema, _ = v2_schemas(document())
    generate = {"parameters": {"batch_size": 2, "seed": 1}}
    jsonschema.validate(generate, request_schema)
    assert decoder.post("/v2/models/vae-digits-decoder/infer", json=generate).status_code == 200


def test_model_readiness_documents_its_not_ready_body_and_the_guards_problems() -> None:
    for path in ("/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready"):
        content = document()["paths"][path]["get"]["responses"]["503"]["content"]
        assert set(content) == {"application/json", "application/problem+json"}, path


def test_statuses_a_route_cannot_answer_are_not_documented() -> None:
    """/metrics without its token cannot refuse anyone; no GET model route reads a body."""
    plain = document(auth_enabled=False)["paths"]
    assert not {"401", "403", "429"} & set(plain["/metrics"]["get"]["responses"])
    assert not {"401", "403"} & set(plain["/infer"]["post"]["responses"])
    assert "429" in plain["/infer"]["post"]["responses"]  # the rate limit still may
    tokened = document(metrics_token="metrics-token-0123456789")["paths"]
    assert {"401", "429"} <= set(tokened["/metrics"]["get"]["responses"])
    assert {"401", "403"} <= set(tokened["/infer"]["post"]["responses"])
    assert "422" not in tokened["/v2/models/{name}"]["get"]["responses"]


def test_a_binary_v2_exchange_is_octet_stream_with_the_header_length(cnn: AppClient) -> None:
    request_schema, response_schema = v2_schemas(document())
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 784 * 4},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    jsonschema.validate(header, request_schema)
    raw = json.dumps(header).encode()
    response = cnn.post(
        "/v2/models/cnn-digits/infer",
        content=raw + np.zeros(784, dtype="<f4").tobytes(),
        headers={"content-type": "application/octet-stream", HEADER_LENGTH: str(len(raw))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    size = int(response.headers[HEADER_LENGTH])
    jsonschema.validate(json.loads(response.content[:size]), response_schema)
    assert len(response.content) == size + 10 * 4


API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearerApiKey": []}]


def test_every_guarded_route_takes_an_api_key_in_either_header_and_public_ones_none() -> None:
    doc = document()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["bearerApiKey"]["type"] == "http"
    assert schemes["bearerApiKey"]["scheme"] == "bearer"
    assert "metricsToken" not in schemes  # no token set: /metrics asks for nothing
    seen = set()
    for path, _, operation in operations(doc):
        seen.add(path)
        expected = None if path in PUBLIC_PATHS else API_KEY
        assert operation.get("security") == expected, path
    assert {"/infer", "/v2/models/{name}", "/metrics", "/readyz", "/v2"} <= seen


def test_metrics_documents_its_own_bearer_token_when_one_is_set() -> None:
    doc = document(metrics_token="metrics-token-0123456789")
    assert doc["components"]["securitySchemes"]["metricsToken"]["scheme"] == "bearer"
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"metricsToken": []}]
    assert doc["paths"]["/infer"]["post"]["security"] == API_KEY


def test_with_auth_off_the_document_claims_no_key() -> None:
    doc = document(auth_enabled=False)
    assert "securitySchemes" not in doc.get("components", {})
    assert all("security" not in operation for _, _, operation in operations(doc))


def test_the_served_document_is_the_secured_one_built_once(docs: AppClient) -> None:
    served = docs.get("/openapi.json").json()
    assert served == docs.app.openapi()
    assert docs.app.openapi() is docs.app.openapi()
    assert served["paths"]["/infer"]["post"]["security"] == API_KEY
    assert "security" not in served["paths"]["/readyz"]["get"]


def test_readyz_documents_its_valueless_verbose_flag(docs: AppClient) -> None:
    (verbose,) = document()["paths"]["/readyz"]["get"]["parameters"]
    assert verbose["name"] == "verbose" and verbose["in"] == "query"
    assert verbose["required"] is False and verbose["allowEmptyValue"] is True
    assert "checks" in docs.get("/readyz?verbose").json()
    assert "checks" in docs.get("/readyz?verbose=1").json()
    assert docs.get("/readyz").json() == {"status": "ready"}


def directives(csp: str) -> dict[str, set[str]]:
    parsed = (part.split() for part in csp.split(";") if part.strip())
    return {name: set(values) for name, *values in parsed}


def test_the_docs_page_gets_a_csp_that_lets_swagger_ui_load(docs: AppClient) -> None:
    page = docs.get("/docs")
    assert page.status_code == 200
    csp = directives(page.headers["content-security-policy"])
    # Each origin the page loads from is allowed for what it loads, and so is its inline script.
    sources = {
        "script-src": re.findall(r'<script src="([^"]+)"', page.text),
        "style-src": re.findall(
            r'<link type="text/css" rel="stylesheet" href="([^"]+)"', page.text
        ),
        "img-src": re.findall(r'<link rel="shortcut icon" href="([^"]+)"', page.text),
    }
    for directive, urls in sources.items():
        assert urls, directive
        for url in urls:
            assert "/".join(url.split("/")[:3]) in csp[directive], (directive, url)
    assert "<script>" in page.text and "'unsafe-inline'" in csp["script-src"]
    assert "'unsafe-inline'" in csp["style-src"] and "data:" in csp["img-src"]  # Swagger UI's
    assert csp["connect-src"] == {"'self'"}  # fetches /openapi.json
    assert csp["default-src"] == {"'none'"} and csp["frame-ancestors"] == {"'none'"}
    assert page.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    ("path", "status"),
    [("/openapi.json", 200), ("/healthz", 200), ("/infer", 401), ("/docs/", 401)],
)
def test_every_other_response_keeps_the_strict_csp(docs: AppClient, path: str, status: int) -> None:
    response = docs.get(path)
    assert response.status_code == status
    assert response.headers["content-security-policy"] == STRICT_CSP


def test_with_docs_off_the_docs_path_keeps_the_strict_csp(cnn: AppClient) -> None:
    response = cnn.get("/docs")
    assert response.status_code == 404
    assert response.headers["content-security-policy"] == STRICT_CSP
