"""Headers sent on several lines are read as a proxy in front reads them (RFC 9110 5.3)."""

from __future__ import annotations

import gzip

import orjson
import pytest

from tests.integration.app.apps import AppClient
from tests.integration.app.test_infer import pixels
from tests.integration.app.test_v2 import INFER, digit, json_request

JSON = ("content-type", "application/json")


@pytest.mark.parametrize("url", ["/infer", INFER])
def test_content_codings_on_two_lines_are_their_list(cnn: AppClient, url: str) -> None:
    """`gzip` then `br` is `gzip, br`, which is not supported: it was decoded as plain gzip."""
    document = {"inputs": {"image": pixels(3)}} if url == "/infer" else json_request(3)
    body = gzip.compress(orjson.dumps(document))
    one_line = [JSON, ("content-encoding", "gzip")]
    assert cnn.post(url, content=body, headers=one_line).status_code == 200
    two_lines = [JSON, ("content-encoding", "gzip"), ("content-encoding", "br")]
    response = cnn.post(url, content=body, headers=two_lines)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("url", ["/infer", INFER])
def test_two_different_content_types_are_a_400(cnn: AppClient, url: str) -> None:
    document = {"inputs": {"image": pixels(3)}} if url == "/infer" else json_request(3)
    headers = [JSON, ("content-type", "text/plain")]
    response = cnn.post(url, content=orjson.dumps(document), headers=headers)
    assert response.status_code == 400, response.text
    assert "content-type" in response.json()["detail"]
    assert cnn.post(url, content=orjson.dumps(document), headers=[JSON, JSON]).status_code == 200


def test_two_different_binary_header_lengths_are_a_400(cnn: AppClient) -> None:
    raw = digit(2).tobytes()
    input_ = {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32"}
    header = orjson.dumps({"inputs": [{**input_, "parameters": {"binary_data_size": len(raw)}}]})
    headers = [
        ("content-type", "application/octet-stream"),
        ("inference-header-content-length", str(len(header))),
        ("inference-header-content-length", "2"),
    ]
    response = cnn.post(INFER, content=header + raw, headers=headers)
    assert response.status_code == 400, response.text
    assert cnn.post(INFER, content=header + raw, headers=headers[:2]).status_code == 200
