"""Digit classification and the contract's edges over real HTTP, against `frameworm serve`."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from models.demo import sample_png
from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def label_of(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(np.argmax(response.json()["outputs"]["probabilities"][0]))


@pytest.mark.parametrize("label", [0, 3, 9])
def test_a_json_image_is_classified_over_http(client: httpx.Client, label: int) -> None:
    image = {"b64": base64.b64encode(sample_png(label)).decode(), "content_type": "image/png"}
    assert label_of(client.post("/infer", json={"inputs": {"image": image}})) == label


@pytest.mark.parametrize("label", [1, 7])
def test_a_multipart_upload_is_classified_over_http(client: httpx.Client, label: int) -> None:
    files = {"image": (f"digit-{label}.png", sample_png(label), "image/png")}
    assert label_of(client.post("/infer", files=files)) == label


def test_the_real_server_sends_no_server_header_and_the_security_headers(
    client: httpx.Client,
) -> None:
    for response in (client.get("/healthz"), client.get("/nope")):
        assert "server" not in response.headers
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-request-id"]


def test_a_v2_request_with_a_one_microsecond_timeout_is_504(client: httpx.Client) -> None:
    document = {
        "inputs": [
            {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
        ],
        "parameters": {"timeout": 1},
    }
    response = client.post("/v2/models/cnn-digits/infer", json=document)
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "deadline-exceeded"
    assert response.json()["error"]


def test_an_error_over_http_is_problem_json_with_the_request_id(client: httpx.Client) -> None:
    response = client.post("/infer", content=b"{", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["request_id"] == response.headers["x-request-id"]
