"""POST /infer: JSON and multipart in, outputs and the serving version out."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image

from app.api import infer as infer_api
from app.inference import codec
from app.inference.images import REQUEST_MAX_PIXELS
from models.demo import sample_png
from tests.integration.app.apps import AppClient
from tests.unit.app.inference.test_images import BROKEN_PNG

DIGITS = range(10)


def multipart(fields: dict[str, str]) -> dict[str, Any]:
    """Form fields as multipart/form-data (httpx would send them url-encoded)."""
    boundary = "frameworm-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return {
        "content": ("".join(parts) + f"--{boundary}--\r\n").encode(),
        "headers": {"content-type": f"multipart/form-data; boundary={boundary}"},
    }


def image_input(label: int) -> dict[str, str]:
    return {"b64": base64.b64encode(sample_png(label)).decode(), "content_type": "image/png"}


def pixels(label: int) -> list[Any]:
    """The sample as the nested list the model takes: (1, 1, 28, 28), values in [0, 1]."""
    image = Image.open(io.BytesIO(sample_png(label))).convert("L")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None, None].tolist()  # type: ignore[no-any-return]


def predicted(response_json: dict[str, Any]) -> list[int]:
    return [int(np.argmax(row)) for row in response_json["outputs"]["probabilities"]]


@pytest.mark.parametrize("label", DIGITS)
def test_a_json_image_is_classified_as_its_digit(cnn: AppClient, label: int) -> None:
    response = cnn.post("/infer", json={"inputs": {"image": image_input(label)}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert predicted(body) == [label]
    assert body["model"] == "cnn-digits"
    assert body["version"] == "1.0.0"
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["x-model-version"] == "1.0.0"


def test_a_batch_of_json_images_keeps_the_batch_dimension(cnn: AppClient) -> None:
    images = [image_input(label) for label in (7, 1, 4)]
    response = cnn.post("/infer", json={"inputs": {"image": images}})
    assert response.status_code == 200, response.text
    assert predicted(response.json()) == [7, 1, 4]


def test_a_nested_list_is_classified_like_the_image(cnn: AppClient) -> None:
    response = cnn.post("/infer", json={"inputs": {"image": pixels(5)}})
    assert response.status_code == 200, response.text
    assert predicted(response.json()) == [5]


def test_a_multipart_file_is_classified(cnn: AppClient) -> None:
    files = {"image": ("digit.png", sample_png(8), "image/png")}
    response = cnn.post("/infer", files=files)
    assert response.status_code == 200, response.text
    assert predicted(response.json()) == [8]


def test_a_multipart_json_field_is_taken_as_a_nested_list(cnn: AppClient) -> None:
    response = cnn.post("/infer", **multipart({"image": orjson.dumps(pixels(2)).decode()}))
    assert response.status_code == 200, response.text
    assert predicted(response.json()) == [2]


def test_a_boolean_among_the_pixels_is_422(cnn: AppClient) -> None:
    image = pixels(2)
    image[0][0][14][14] = True
    response = cnn.post("/infer", json={"inputs": {"image": image}})
    assert response.status_code == 422
    assert "mixes booleans with numbers" in response.json()["detail"]
    field = multipart({"image": orjson.dumps(image).decode()})
    assert cnn.post("/infer", **field).status_code == 422


def test_a_multipart_json_field_nested_past_the_depth_limit_is_400(cnn: AppClient) -> None:
    deep = "[" * 40 + "0" + "]" * 40  # FRAMEWORM_MAX_JSON_DEPTH is 32 by default
    response = cnn.post("/infer", **multipart({"image": deep}))
    assert response.status_code == 400
    assert "nested deeper than 32 levels" in response.json()["detail"]


@pytest.mark.parametrize(
    ("data", "files", "code"),
    [
        pytest.param(
            {}, {"other": ("x.png", b"x", "image/png")}, "invalid-input", id="unknown-part"
        ),
        pytest.param(
            {"parameters": "{}"},
            {"image": ("x.png", b"junk", "image/png")},
            "invalid-input",
            id="parameters-for-cnn-and-junk",
        ),
        pytest.param(
            {}, {"image": ("x.gif", b"GIF89a", "image/gif")}, "unsupported-media-type", id="gif"
        ),
    ],
)
def test_bad_multipart_parts_are_refused(
    cnn: AppClient, data: dict[str, str], files: dict[str, Any] | None, code: str
) -> None:
    response = cnn.post("/infer", data=data, files=files)
    assert response.json()["code"] == code


def test_a_multipart_json_field_that_is_not_json_is_400(cnn: AppClient) -> None:
    response = cnn.post("/infer", **multipart({"image": "[1,"}))
    assert response.status_code == 400
    assert "'image' is not valid JSON" in response.json()["detail"]


def test_a_multipart_parameters_field_must_be_an_object(decoder: AppClient) -> None:
    response = decoder.post("/infer", **multipart({"parameters": "[1]"}))
    assert response.status_code == 422


def test_multipart_parameters_drive_generation(decoder: AppClient) -> None:
    response = decoder.post("/infer", **multipart({"parameters": '{"batch_size": 3, "seed": 2}'}))
    assert response.status_code == 200, response.text
    assert len(response.json()["outputs"]["image"]) == 3


def test_a_multipart_body_cut_short_is_400_not_served_without_its_last_part(
    decoder: AppClient,
) -> None:
    complete = multipart({"parameters": '{"batch_size": 2, "seed": 1}'})
    assert decoder.post("/infer", **complete).status_code == 200
    cut = complete["content"].removesuffix(b"--frameworm-test-boundary--\r\n")
    response = decoder.post("/infer", content=cut, headers=complete["headers"])
    assert response.status_code == 400
    assert "closing boundary" in response.json()["detail"]


def test_a_multipart_body_with_an_empty_boundary_is_400(decoder: AppClient) -> None:
    """RFC 2046: a boundary has 1 to 70 characters. An empty one makes any "----" a close
    delimiter, and python-multipart parsed such bodies."""
    body = b'--\r\nContent-Disposition: form-data; name="parameters"\r\n\r\n{}\r\n----\r\n'
    headers = {"content-type": "multipart/form-data; boundary="}
    response = decoder.post("/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert "no boundary" in response.json()["detail"]


def test_a_multipart_json_field_over_a_megabyte_is_read(cnn: AppClient) -> None:
    # Starlette stops form fields at 1 MB by default; the body limit is what applies.
    field = orjson.dumps(pixels(4)).decode() + " " * 1_200_000
    response = cnn.post("/infer", **multipart({"image": field}))
    assert response.status_code == 200, response.text
    assert predicted(response.json()) == [4]


def test_a_multipart_body_that_cannot_be_parsed_is_400(cnn: AppClient) -> None:
    headers = {"content-type": "multipart/form-data"}  # no boundary
    response = cnn.post("/infer", content=b"--zzz\r\nbroken", headers=headers)
    assert response.status_code == 400
    assert response.json()["code"] == "malformed-request"


def test_generation_returns_batch_size_images(decoder: AppClient) -> None:
    response = decoder.post("/infer", json={"parameters": {"batch_size": 4, "seed": 1}})
    assert response.status_code == 200, response.text
    images = np.asarray(response.json()["outputs"]["image"])
    assert images.shape == (4, 1, 28, 28)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_the_same_seed_generates_the_same_images(decoder: AppClient) -> None:
    def generate(seed: int) -> Any:
        body = {"parameters": {"batch_size": 2, "seed": seed}}
        return decoder.post("/infer", json=body).json()["outputs"]["image"]

    assert generate(1) == generate(1)
    assert generate(1) != generate(2)


@pytest.mark.parametrize("batch_size", [0, 129])
def test_a_batch_size_out_of_bounds_is_422(decoder: AppClient, batch_size: int) -> None:
    response = decoder.post("/infer", json={"parameters": {"batch_size": batch_size}})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid-input"
    assert "batch_size" in response.json()["detail"]


def test_malformed_json_is_400(cnn: AppClient) -> None:
    response = cnn.post(
        "/infer", content=b'{"inputs": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed-request"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_another_content_type_is_415(cnn: AppClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = cnn.post("/infer", content=b"{}", headers=headers)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported-media-type"


def test_nan_cannot_be_sent_as_json_and_is_400(cnn: AppClient) -> None:
    body = b'{"inputs": {"image": [[[[NaN]]]]}}'
    response = cnn.post("/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_a_wrong_shape_is_422_naming_the_expected_shape(cnn: AppClient) -> None:
    response = cnn.post("/infer", json={"inputs": {"image": [[1.0, 2.0]]}})
    assert response.status_code == 422
    assert "image: float32[-1, 1, 28, 28]" in response.json()["detail"]


def test_an_unknown_json_input_is_422(cnn: AppClient) -> None:
    body = {"inputs": {"image": image_input(1), "extra": [[1]]}}
    assert cnn.post("/infer", json=body).status_code == 422


# ------------------------------------------------------------------ images: load and bad input
def test_images_are_decoded_off_the_event_loop(
    cnn: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decode blocks until released: on the event loop, /healthz could not answer meanwhile.
    entered, release, left = threading.Event(), threading.Event(), threading.Event()
    convert = Image.Image.convert

    def blocking_convert(self: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        entered.set()
        release.wait(10)
        left.set()
        return convert(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", blocking_convert)
    with ThreadPoolExecutor(1) as pool:
        infer = pool.submit(cnn.post, "/infer", json={"inputs": {"image": image_input(6)}})
        try:
            assert entered.wait(10)
            health = cnn.get("/healthz")
            assert health.status_code == 200
            assert not left.is_set(), "/healthz waited for the decode"
        finally:
            release.set()
        response = infer.result(timeout=30)
    assert response.status_code == 200, response.text
    assert predicted(response.json()) == [6]


def test_a_large_multipart_parameters_part_is_read_off_the_event_loop(
    cnn: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was parsed and checked on the loop: a million unknown names held /healthz for 4 s."""
    entered, release, left = threading.Event(), threading.Event(), threading.Event()
    check = codec.check_parameters

    def blocking_check(signature: Any, given: Any) -> Any:
        if len(given) > 1:  # the large part, not the final defaults pass
            entered.set()
            release.wait(10)
            left.set()
        return check(signature, given)

    monkeypatch.setattr(infer_api, "check_parameters", blocking_check)
    parameters = orjson.dumps({f"unknown-{i}": i for i in range(8000)}).decode()
    body = multipart({"image": orjson.dumps(pixels(2)).decode(), "parameters": parameters})
    with ThreadPoolExecutor(1) as pool:
        infer = pool.submit(cnn.post, "/infer", **body)
        try:
            assert entered.wait(10)
            assert cnn.get("/healthz").status_code == 200
            assert not left.is_set(), "/healthz waited for the parameters"
        finally:
            release.set()
        response = infer.result(timeout=30)
    assert response.status_code == 422
    assert "and 7995 more" in response.json()["detail"]


def test_images_declaring_more_pixels_than_the_request_budget_are_422(cnn: AppClient) -> None:
    # Each under the image limit (4096 x 4096), a few kB, and together past the budget.
    buffer = io.BytesIO()
    Image.new("1", (4096, 4096)).save(buffer, "PNG")
    image = {"b64": base64.b64encode(buffer.getvalue()).decode(), "content_type": "image/png"}
    response = cnn.post("/infer", json={"inputs": {"image": [image] * 3}})
    assert response.status_code == 422
    assert f"at most {REQUEST_MAX_PIXELS} pixels" in response.json()["detail"]
    assert cnn.get("/healthz").status_code == 200


def test_a_corrupt_png_is_422_as_json(cnn: AppClient) -> None:
    image = {"b64": base64.b64encode(BROKEN_PNG).decode(), "content_type": "image/png"}
    response = cnn.post("/infer", json={"inputs": {"image": image}})
    assert response.status_code == 422
    assert response.json()["detail"] == "image could not be decoded"


def test_a_corrupt_png_is_422_as_a_multipart_file(cnn: AppClient) -> None:
    response = cnn.post("/infer", files={"image": ("x.png", BROKEN_PNG, "image/png")})
    assert response.status_code == 422
    assert response.json()["detail"] == "image could not be decoded"


@pytest.mark.parametrize(
    "content_type", ["IMAGE/PNG", "image/png; x=y", "application/octet-stream"]
)
def test_a_multipart_image_content_type_is_matched_loosely(
    cnn: AppClient, content_type: str
) -> None:
    response = cnn.post("/infer", files={"image": ("x.png", sample_png(4), content_type)})
    assert response.status_code == 200, response.text
    assert predicted(response.json()) == [4]


@pytest.mark.parametrize(
    "files",
    [
        pytest.param([("image", ("x.png", sample_png(1), "image/png"))] * 2, id="two-files"),
        pytest.param(
            [
                ("image", ("x.png", sample_png(1), "image/png")),
                ("image", (None, orjson.dumps(pixels(1)).decode())),
            ],
            id="file-and-field",
        ),
    ],
)
def test_a_multipart_input_given_twice_is_422(cnn: AppClient, files: list[Any]) -> None:
    response = cnn.post("/infer", files=files)
    assert response.status_code == 422
    assert response.json()["detail"] == "part 'image' is given twice"
