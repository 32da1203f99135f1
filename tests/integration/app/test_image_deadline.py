"""A request's deadline counts its images' decoding: no image is decoded once it has passed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from app.inference import images
from tests.integration.app.apps import app_settings, running_app
from tests.integration.app.test_infer import image_input

DECODE_S = 0.4  # each image, here
TIMEOUT_MS = 600  # room for two images, not three


def test_images_still_to_decode_at_the_deadline_are_not_decoded_and_the_answer_is_504(
    seeded_registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images within the request's pixel budget took 20 s to decode on this machine, and the
    request was answered after them, whatever its deadline (it counted from after decoding)."""
    decoded: list[str] = []
    decode = images._decode

    def slow_decode(image: images.EncodedImage, opened: Image.Image) -> object:
        time.sleep(DECODE_S)
        decoded.append(image.field)
        return decode(image, opened)

    monkeypatch.setattr(images, "_decode", slow_decode)
    settings = app_settings(seeded_registry, model="cnn-digits", request_timeout_ms=TIMEOUT_MS)
    with running_app(settings) as client:
        body = {"inputs": {"image": [image_input(label) for label in (1, 2, 3, 4)]}}
        started = time.monotonic()
        response = client.post("/infer", json=body)
        took = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "deadline-exceeded"
    assert len(decoded) < 4
    assert took < 4 * DECODE_S
