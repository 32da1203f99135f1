"""A stock tritonclient.http client talks to frameworm's v2 routes unchanged."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from models.demo import sample_png
from tests.support.server import ServerProcess

MODEL = "cnn-digits"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Any]:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield client
    client.close()


def digit(label: int) -> np.ndarray:
    image = Image.open(io.BytesIO(sample_png(label))).convert("L")
    return (np.asarray(image, dtype=np.float32) / 255.0)[None, None]


def test_tritonclient_reads_server_and_model_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1.0.0")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "frameworm"
    model = client.get_model_metadata(MODEL)
    assert model["versions"] == ["1.0.0"]
    assert model["inputs"][0]["datatype"] == "FP32"


@pytest.mark.parametrize(
    ("binary_input", "binary_output"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["json-json", "binary-json", "json-binary", "binary-binary"],
)
def test_tritonclient_inference_classifies_the_digit(
    client: Any, binary_input: bool, binary_output: bool
) -> None:
    label = 6
    tensor = triton.InferInput("image", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(digit(label), binary_data=binary_input)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary_output)
    result = client.infer(MODEL, [tensor], outputs=[output], request_id="t-1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 10)
    assert int(np.argmax(probabilities)) == label
    assert result.get_response()["model_version"] == "1.0.0"


def test_tritonclient_raises_on_an_unknown_model(client: Any) -> None:
    from tritonclient.utils import InferenceServerException

    tensor = triton.InferInput("image", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(digit(1))
    with pytest.raises(InferenceServerException, match="does not serve"):
        client.infer("nope", [tensor])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_may_compress_its_requests(client: Any, algorithm: str) -> None:
    label = 3
    tensor = triton.InferInput("image", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(digit(label))
    result = client.infer(
        MODEL,
        [tensor],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert int(np.argmax(result.as_numpy("probabilities"))) == label


def test_tritonclient_sequence_requests_are_refused_with_the_reason(client: Any) -> None:
    from tritonclient.utils import InferenceServerException

    tensor = triton.InferInput("image", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(digit(1))
    with pytest.raises(InferenceServerException, match="sequence batching"):
        client.infer(MODEL, [tensor], sequence_id=5, sequence_start=True)
