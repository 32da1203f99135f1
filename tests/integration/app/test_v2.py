"""The Open Inference Protocol v2 routes, in-process."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from models.demo import sample_png
from models.registry import ModelRegistry
from tests.integration.app.apps import AppClient, app_settings, running_app, sample
from tests.support.models import MODEL, register_mlp, register_slow

INFER = "/v2/models/cnn-digits/infer"


def digit(label: int) -> np.ndarray:
    image = Image.open(io.BytesIO(sample_png(label))).convert("L")
    return (np.asarray(image, dtype=np.float32) / 255.0)[None, None]


def json_request(label: int, **fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "data": digit(label).ravel().tolist(),
            }
        ]
    }
    document.update(fields)
    return document


def test_server_metadata_names_the_binary_extension(cnn: AppClient) -> None:
    body = cnn.get("/v2").json()
    assert body["name"] == "frameworm"
    assert "binary_tensor_data" in body["extensions"]


def test_model_metadata_describes_the_signature(cnn: AppClient) -> None:
    for url in ("/v2/models/cnn-digits", "/v2/models/cnn-digits/versions/1.0.0"):
        body = cnn.get(url).json()
        assert body["name"] == "cnn-digits"
        assert body["versions"] == ["1.0.0"]
        assert body["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        assert body["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]


@pytest.mark.parametrize(
    "url",
    [
        "/v2/models/nope",
        "/v2/models/cnn-digits/versions/9.9.9",
        "/v2/models/nope/ready",
        "/v2/models/cnn-digits/versions/9.9.9/ready",
    ],
)
def test_an_unknown_model_or_version_is_404_with_the_error_member(cnn: AppClient, url: str) -> None:
    response = cnn.get(url)
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "model-not-found"
    assert body["error"] == body["detail"]


def test_inference_on_an_unknown_model_is_404(cnn: AppClient) -> None:
    assert cnn.post("/v2/models/nope/infer", json=json_request(1)).status_code == 404
    url = "/v2/models/cnn-digits/versions/2.0.0/infer"
    assert cnn.post(url, json=json_request(1)).status_code == 404


@pytest.mark.parametrize("label", [0, 6, 9])
def test_json_inference_classifies_the_digit(cnn: AppClient, label: int) -> None:
    response = cnn.post(INFER, json=json_request(label, id="req-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "cnn-digits"
    assert body["model_version"] == "1.0.0"
    assert response.headers["x-model-version"] == "1.0.0"  # as /infer's (it had none)
    assert body["id"] == "req-1"
    (output,) = body["outputs"]
    assert output["shape"] == [1, 10]
    assert int(np.argmax(output["data"])) == label


def test_a_request_without_content_type_is_accepted(cnn: AppClient) -> None:
    response = cnn.post(
        "/v2/models/cnn-digits/versions/1.0.0/infer", content=orjson.dumps(json_request(4))
    )
    assert response.status_code == 200, response.text


def test_binary_output_comes_after_the_header(cnn: AppClient) -> None:
    document = json_request(3, parameters={"binary_data_output": True})
    response = cnn.post(INFER, json=document)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 40}
    assert response.headers["x-model-version"] == "1.0.0"
    probabilities = np.frombuffer(response.content[length:], dtype="<f4")
    assert int(np.argmax(probabilities)) == 3


def test_binary_input_is_served(cnn: AppClient) -> None:
    raw = digit(2).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    response = cnn.post(
        INFER,
        content=header + raw,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert response.status_code == 200, response.text
    assert int(np.argmax(response.json()["outputs"][0]["data"])) == 2


def test_a_timeout_of_one_microsecond_is_504(cnn: AppClient) -> None:
    response = cnn.post(INFER, json=json_request(1, parameters={"timeout": 1}))
    assert response.status_code == 504
    body = response.json()
    assert body["code"] == "deadline-exceeded"
    assert body["error"] == body["detail"]


def shed(client: AppClient, reason: str) -> float:
    return sample(client, f'frameworm_requests_shed_total{{reason="{reason}"}}')


def test_a_miss_of_the_client_s_own_deadline_is_counted_as_client_deadline(
    cnn: AppClient,
) -> None:
    """Alerts and canary analysis subtract these from the 5xx: no client can fail a version."""
    before = shed(cnn, "client_deadline")
    response = cnn.post(INFER, json=json_request(1, parameters={"timeout": 1}))
    assert response.status_code == 504
    assert shed(cnn, "client_deadline") == before + 1


def test_a_miss_of_the_server_s_deadline_is_no_client_deadline(seeded_registry: Path) -> None:
    settings = app_settings(
        seeded_registry, model="cnn-digits", request_timeout_ms=0.001, max_batch_delay_ms=0
    )
    with running_app(settings) as client:
        for parameters in ({}, {"timeout": 60_000_000}):  # none, or longer than the server's
            response = client.post(INFER, json=json_request(1, parameters=parameters))
            assert response.status_code == 504
        assert shed(client, "deadline") == 2
        assert shed(client, "client_deadline") == 0


def test_a_client_s_own_deadline_the_queue_would_outlast_is_504_client_deadline(
    seeded_registry: Path,
) -> None:
    """Admission control on a busy server: a `timeout` shorter than the server's deadline that
    the expected wait outlasts is the client's miss (504, client_deadline), not an overload
    (503) counted against the server; the server's own deadline still gets 503."""
    settings = app_settings(seeded_registry, model="cnn-digits", request_timeout_ms=1000)
    with running_app(settings) as client:
        batcher = client.state["batcher"]
        batcher.in_flight_items = 1  # busy, as if a batch were running ...
        batcher._recent_batches.append(5.0)  # ... of batches that take 5 s
        try:
            mine = client.post(INFER, json=json_request(1, parameters={"timeout": 500_000}))
            servers = [
                client.post(INFER, json=json_request(1, parameters=parameters))
                for parameters in ({}, {"timeout": 60_000_000})  # none, or the server's is less
            ]
        finally:
            batcher.in_flight_items = 0
        assert (mine.status_code, mine.json()["code"]) == (504, "deadline-exceeded")
        assert [(r.status_code, r.json()["code"]) for r in servers] == [(503, "overloaded")] * 2
        assert shed(client, "client_deadline") == 1
        assert shed(client, "admission") == 2


def test_an_unknown_datatype_is_422_with_the_error_member(cnn: AppClient) -> None:
    document = json_request(1)
    document["inputs"][0]["datatype"] = "FP8"
    response = cnn.post(INFER, json=document)
    assert response.status_code == 422
    assert "FP32" in response.json()["error"]


def test_a_boolean_among_fp32_data_is_422(cnn: AppClient) -> None:
    document = json_request(1)
    document["inputs"][0]["data"][100] = True
    response = cnn.post(INFER, json=document)
    assert response.status_code == 422
    assert "does not match shape and datatype" in response.json()["error"]


def test_a_text_content_type_is_415(cnn: AppClient) -> None:
    response = cnn.post(INFER, content=b"{}", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_input_parameters_that_are_not_an_object_are_422(cnn: AppClient) -> None:
    document = json_request(1)
    document["inputs"][0]["parameters"] = ["binary_data_size"]
    assert cnn.post(INFER, json=document).status_code == 422


DECODER_INFER = "/v2/models/vae-digits-decoder/infer"


def latent(**fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": "latent", "shape": [1, 16], "datatype": "FP32"}
    item.update(fields)
    return {"inputs": [item]}


def binary_body(document: dict[str, Any], data: bytes) -> dict[str, Any]:
    header = orjson.dumps(document)
    return {
        "content": header + data,
        "headers": {
            "inference-header-content-length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    }


# Too many items along the batch dimension is 413, as any request past the item limit; past
# it, a shape overflowing int64 is 422. Neither reaches numpy's overflow (a 500).
OVERFLOWING_SHAPES = [
    ([2**32, 2**32], 413, "payload-too-large"),
    ([2**63, 2], 413, "payload-too-large"),
    ([2**63, 0], 413, "payload-too-large"),
    ([1, 2**63], 422, "invalid-input"),
    ([1, 2**32, 2**32], 422, "invalid-input"),
]


@pytest.mark.parametrize(("shape", "status", "code"), OVERFLOWING_SHAPES)
def test_a_shape_overflowing_int64_is_refused_as_json(
    decoder: AppClient, shape: list[int], status: int, code: str
) -> None:
    response = decoder.post(DECODER_INFER, json=latent(shape=shape, data=[]))
    assert response.status_code == status
    assert response.json()["code"] == code


@pytest.mark.parametrize(("shape", "status", "code"), OVERFLOWING_SHAPES)
def test_a_shape_overflowing_int64_is_refused_as_binary(
    decoder: AppClient, shape: list[int], status: int, code: str
) -> None:
    document = latent(shape=shape, parameters={"binary_data_size": 0})
    response = decoder.post(DECODER_INFER, **binary_body(document, b""))
    assert response.status_code == status
    assert response.json()["code"] == code


@pytest.mark.parametrize("datatype", [["FP32"], {"FP32": 1}])
def test_a_datatype_that_is_not_a_string_is_422(decoder: AppClient, datatype: Any) -> None:
    response = decoder.post(DECODER_INFER, json=latent(datatype=datatype, data=[0] * 16))
    assert response.status_code == 422
    assert "the model takes FP32" in response.json()["error"]


def test_a_timeout_of_0_means_none_as_in_triton(decoder: AppClient) -> None:
    document = latent(data=[0.0] * 16)
    document["parameters"] = {"timeout": 0}
    response = decoder.post(DECODER_INFER, json=document)
    assert response.status_code == 200, response.text


def test_fp16_infinity_as_binary_data_is_422(cnn: AppClient) -> None:
    data = np.full((1, 1, 28, 28), np.inf, dtype="<f2").tobytes()
    item = {
        "name": "image",
        "shape": [1, 1, 28, 28],
        "datatype": "FP16",
        "parameters": {"binary_data_size": len(data)},
    }
    response = cnn.post(INFER, **binary_body({"inputs": [item]}, data))
    assert response.status_code == 422
    assert "NaN or infinity" in response.json()["error"]


def test_a_version_pinned_request_is_never_answered_by_the_next_version(tmp_path: Path) -> None:
    """Requests to /versions/1.0.0 still queued when 2.0.0 takes over are 404, not 2.0.0's."""
    registry = ModelRegistry(tmp_path / "registry")
    register_slow(registry, "1.0.0", tmp_path, seed=1, size=300)  # a batch takes a while
    registry.promote(MODEL, "1.0.0", "production")
    register_mlp(registry, "2.0.0", tmp_path, seed=2)
    settings = app_settings(
        tmp_path / "registry",
        model=MODEL,
        follow_stage=True,
        follow_interval_s=3600,  # switched by hand below
        max_batch_size=1,
        warmup=False,
        request_timeout_ms=60_000,
    )
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5, -0.25, 1.0, 0.0]}

    async def switch_while_queued(http: httpx.AsyncClient) -> list[httpx.Response]:
        url = f"/v2/models/{MODEL}/versions/1.0.0/infer"
        sent = [asyncio.create_task(http.post(url, json={"inputs": [tensor]})) for _ in range(20)]
        async with asyncio.timeout(10):
            while client.state["batcher"].queued_items < 5:  # some wait behind the one running
                await asyncio.sleep(0.001)
        assert await client.state["follower"].switch_to("2.0.0")
        return await asyncio.gather(*sent)

    with running_app(settings) as client:
        answers = client.run(switch_while_queued)

    outcomes = {(a.status_code, a.json().get("model_version")) for a in answers}
    assert outcomes <= {(200, "1.0.0"), (404, None)}
    assert (404, None) in outcomes  # some were still queued at the switch
