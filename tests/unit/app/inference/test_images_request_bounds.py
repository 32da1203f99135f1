"""What bounds a request's images beyond each image's own limits: a side's length, the
structure the images hold together, and the deadline before each image is opened."""

from __future__ import annotations

import io
import struct
import time
import zlib
from typing import Any

import pytest
from PIL import Image

from app.errors import Problem
from app.inference import image_structure
from app.inference.images import MAX_SIDE, EncodedImage, decode_images
from models.manifest import ImageSpec

SPEC = ImageSpec(mode="L", height=28, width=28, formats=("PNG",), max_pixels=4096 * 4096)


def refused(images: list[bytes]) -> Problem:
    with pytest.raises(Problem) as caught:
        decode_images([EncodedImage(f"image{i}", raw, SPEC, None) for i, raw in enumerate(images)])
    return caught.value


def line_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("width", "height"), [(1, MAX_SIDE + 1), (MAX_SIDE + 1, 1)])
def test_a_side_longer_than_the_limit_is_refused_before_decoding(width: int, height: int) -> None:
    """1 x 16M pixels is within max_pixels, and cost 30 times a square image's time and 25
    times its memory to decode and shrink."""
    problem = refused([line_png(width, height)])
    assert (problem.status, problem.code) == (422, "invalid-input")
    assert problem.detail == f"image0 is {width} x {height}: at most {MAX_SIDE} a side"


def test_a_side_at_the_limit_is_decoded() -> None:
    (array,) = decode_images([EncodedImage("image", line_png(1, MAX_SIDE), SPEC, None)])
    assert array.shape == (1, 28, 28)


def png_with_chunks(count: int) -> bytes:
    """A 28 x 28 PNG whose structure is `count` chunks (IHDR, private ones, IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + bytes(28) for _ in range(28)))
    private = chunk(b"prVt", b"") * (count - 3)
    body = chunk(b"IHDR", header) + private + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_images_within_their_own_limits_but_over_the_request_s_budget_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """128 images just under the chunk limit each cost Pillow 7 s to open, past any deadline."""
    monkeypatch.setattr(image_structure, "PNG_MAX_CHUNKS", 16)
    monkeypatch.setattr(image_structure, "REQUEST_MAX_STEPS", 40)
    assert len(decode_images([EncodedImage("x", png_with_chunks(13), SPEC, None)] * 3)) == 3
    walked = []
    original = image_structure.walk

    def counting(raw: bytes, left: int) -> image_structure.Walk:
        walked.append(result := original(raw, left))
        return result

    monkeypatch.setattr("app.inference.images.walk", counting)
    problem = refused([png_with_chunks(13)] * 8)
    assert (problem.status, problem.code) == (422, "invalid-input")
    assert problem.detail.endswith("together; send fewer at a time")
    # The walk itself stops with the budget: the fourth image is not walked whole.
    assert len(walked) == 4 and sum(w.steps for w in walked) == 41


def test_no_image_is_opened_once_the_deadline_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    def opened(*args: Any, **kwargs: Any) -> Image.Image:
        raise AssertionError("Pillow opened an image after the deadline")

    monkeypatch.setattr(Image, "open", opened)
    images = [EncodedImage("image", png_with_chunks(3), SPEC, None)]
    with pytest.raises(Problem) as caught:
        decode_images(images, deadline=time.monotonic())
    assert (caught.value.status, caught.value.code) == (504, "deadline-exceeded")


def test_a_jpeg_s_last_steps_count_against_the_request_s_budget() -> None:
    """The walk ended at the first scan before checking the budget: the request's last JPEG
    could take up to a whole JPEG's limits past it."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, "JPEG")
    raw = buffer.getvalue()
    steps = image_structure.walk(raw, 10_000).steps
    assert steps > 0
    assert image_structure.walk(raw, steps) == image_structure.Walk(steps, None)
    assert image_structure.walk(raw, steps - 1).excess == image_structure.OVER_REQUEST
