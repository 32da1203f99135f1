"""Images -> arrays, under limits checked before any pixel is decoded."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from app.errors import Problem
from app.inference.images import (
    REQUEST_MAX_PIXELS,
    EncodedImage,
    decode_b64,
    decode_images,
    exif_orientation,
)
from models.demo import sample_png
from models.manifest import ImageSpec

SPEC = ImageSpec(mode="L", height=28, width=28, formats=("PNG", "JPEG"), max_pixels=64 * 64)


# A reviewer's fuzzing find: a PNG whose IDAT chunk is followed by garbage, on which Pillow
# raises SyntaxError ("broken PNG file") while loading.
BROKEN_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d494844520000001e0000001408060000009aab8dc400000024"
    "49444154789cedcd310100000c02a0b9fea18de10305486ee347af582c168bc52c9b914555"
    "62f14001cff70029d6c068aa0000000049454e44ae426082"
)


def decode_image(field: str, raw: bytes, spec: ImageSpec, content_type: str | None) -> np.ndarray:
    """One image, decoded on its own."""
    return decode_images([EncodedImage(field, raw, spec, content_type)])[0]


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with one tiny (wrong) data chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def refused(code: str) -> pytest.RaisesExc[Problem]:
    return pytest.raises(Problem, check=lambda p: p.code == code)


def test_a_png_becomes_a_scaled_channel_first_float_array() -> None:
    array = decode_image("image", sample_png(3), SPEC, "image/png")
    assert array.shape == (1, 28, 28)
    assert array.dtype == np.float32
    assert float(array.min()) >= 0.0 and float(array.max()) <= 1.0
    assert float(array.max()) > 0.5  # the digit is there, white on black


def test_an_image_of_another_size_and_mode_is_converted_and_resized() -> None:
    raw = encoded(Image.new("RGB", (40, 50), (255, 255, 255)))
    array = decode_image("image", raw, SPEC, None)
    assert array.shape == (1, 28, 28)
    assert np.allclose(array, 1.0)


def test_an_rgb_spec_gives_three_channels() -> None:
    spec = SPEC.model_copy(update={"mode": "RGB"})
    array = decode_image("image", encoded(Image.new("L", (28, 28), 0)), spec, "image/png")
    assert array.shape == (3, 28, 28)


def test_a_16_bit_grayscale_png_is_scaled_not_clipped() -> None:
    eight = np.asarray(Image.open(io.BytesIO(sample_png(3))).convert("L"))
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)  # 0..255 -> 0..65535, the same image
    assert sixteen.mode.startswith("I;16")
    from_sixteen = decode_image("image", encoded(sixteen), SPEC, "image/png")
    from_eight = decode_image("image", sample_png(3), SPEC, "image/png")
    assert np.array_equal(from_sixteen, from_eight)


def test_invert_flips_the_scale() -> None:
    spec = SPEC.model_copy(update={"invert": True})
    array = decode_image("image", encoded(Image.new("L", (28, 28), 0)), spec, "image/png")
    assert np.allclose(array, 1.0)


def test_a_jpeg_is_accepted_when_allow_listed() -> None:
    raw = encoded(Image.new("L", (28, 28), 128), "JPEG")
    assert decode_image("image", raw, SPEC, "image/jpeg").shape == (1, 28, 28)


@pytest.mark.parametrize("content_type", ["image/gif", "image/webp", "text/plain"])
def test_a_content_type_outside_the_allow_list_is_415(content_type: str) -> None:
    with refused("unsupported-media-type") as caught:
        decode_image("image", sample_png(1), SPEC, content_type)
    assert caught.value.status == 415


def test_a_format_outside_the_allow_list_is_refused_even_without_a_content_type() -> None:
    raw = encoded(Image.new("L", (28, 28), 0), "GIF")
    with refused("invalid-input") as caught:
        decode_image("image", raw, SPEC, None)
    assert "PNG, JPEG" in caught.value.detail


def test_a_header_declaring_too_many_pixels_is_refused_before_decoding() -> None:
    # 1-bit pixels compress to almost nothing: a 5000 x 5000 bomb in a few kB.
    raw = encoded(Image.new("1", (5000, 5000)))
    assert len(raw) < 10_000
    with refused("invalid-input") as caught:
        decode_image("image", raw, SPEC, "image/png")
    assert f"more than {SPEC.max_pixels} pixels" in caught.value.detail


def test_a_bomb_whose_data_is_absent_is_refused_from_its_header_alone() -> None:
    # The IHDR says 20000 x 20000 but only 16 bytes of data follow: decoding would fail,
    # so a 422 naming the pixel limit proves the header was checked first.
    spec = SPEC.model_copy(update={"max_pixels": 4096 * 4096})
    with refused("invalid-input") as caught:
        decode_image("image", png_header_only(5000, 5000), spec, "image/png")
    assert "more than" in caught.value.detail


def test_a_20000_by_20000_bomb_is_refused_with_422() -> None:
    with refused("invalid-input") as caught:
        decode_image("image", png_header_only(20000, 20000), SPEC, "image/png")
    assert caught.value.status == 422


def test_a_20000_by_20000_bomb_is_refused_naming_the_pixel_limit() -> None:
    with refused("invalid-input") as caught:
        decode_image("image", png_header_only(20000, 20000), SPEC, "image/png")
    assert "pixels" in caught.value.detail


def test_garbage_bytes_are_refused_as_not_an_image() -> None:
    with refused("invalid-input") as caught:
        decode_image("image", b"\x00garbage" * 50, SPEC, "image/png")
    assert "not an image" in caught.value.detail


def test_a_truncated_png_is_refused_as_undecodable() -> None:
    raw = encoded(Image.effect_noise((28, 28), 64).convert("L"))
    with refused("invalid-input"):
        decode_image("image", raw[: len(raw) // 2], SPEC, "image/png")


def test_a_corrupt_png_on_which_pillow_raises_syntax_error_is_refused_as_undecodable() -> None:
    assert len(BROKEN_PNG) == 98
    with refused("invalid-input") as caught:
        decode_image("image", BROKEN_PNG, SPEC, "image/png")
    assert caught.value.detail == "image could not be decoded"


@pytest.mark.parametrize(
    "content_type",
    ["IMAGE/PNG", "image/png; x=y", " Image/Png ;charset=binary", "application/octet-stream"],
)
def test_content_types_match_case_insensitively_without_parameters(content_type: str) -> None:
    assert decode_image("image", sample_png(3), SPEC, content_type).shape == (1, 28, 28)


def test_an_octet_stream_image_is_still_held_to_the_allow_list() -> None:
    raw = encoded(Image.new("L", (28, 28), 0), "GIF")
    with refused("invalid-input") as caught:
        decode_image("image", raw, SPEC, "application/octet-stream")
    assert "not an image in an accepted format" in caught.value.detail


def test_a_request_whose_images_declare_too_many_pixels_in_all_is_refused_before_decoding() -> None:
    # Each header is within the image limit, the sum is not; their data is absent, so decoding
    # would fail: a refusal naming the budget proves the headers were added up first.
    spec = SPEC.model_copy(update={"max_pixels": 4096 * 4096})
    images = [
        EncodedImage(f"image[{i}]", png_header_only(4096, 4096), spec, None) for i in range(3)
    ]
    with refused("invalid-input") as caught:
        decode_images(images)
    assert caught.value.status == 422
    assert f"at most {REQUEST_MAX_PIXELS} pixels" in caught.value.detail


def test_the_pixel_budget_is_at_least_one_image_at_its_spec_limit() -> None:
    spec = SPEC.model_copy(update={"max_pixels": 2 * REQUEST_MAX_PIXELS})
    images = [EncodedImage("image", png_header_only(8192, 8192), spec, None)]
    with refused("invalid-input") as caught:
        decode_images(images)
    assert caught.value.detail == "image could not be decoded"  # within budget: decoding tried


def test_images_within_the_budget_are_decoded_in_order() -> None:
    images = [EncodedImage(f"image[{d}]", sample_png(d), SPEC, "image/png") for d in (1, 7)]
    arrays = decode_images(images)
    assert [a.shape for a in arrays] == [(1, 28, 28)] * 2
    assert np.array_equal(arrays[1], decode_image("image", sample_png(7), SPEC, None))


def test_an_image_larger_than_max_size_mb_is_413_before_anything_else() -> None:
    spec = SPEC.model_copy(update={"max_size_mb": 0.001})
    with refused("payload-too-large") as caught:
        decode_image("image", b"\x00" * 2000, spec, "image/gif")
    assert caught.value.status == 413


def test_base64_decodes_to_the_bytes() -> None:
    assert decode_b64("image", base64.b64encode(b"abc").decode()) == b"abc"


@pytest.mark.parametrize("data", ["not base64!", "QUJD\nRA==", "QUJDRA="])
def test_invalid_base64_is_refused(data: str) -> None:
    with refused("invalid-input") as caught:
        decode_b64("image", data)
    assert "not valid base64" in caught.value.detail


@pytest.mark.parametrize("data", [None, 3, ["QUJD"]])
def test_base64_must_be_a_string(data: object) -> None:
    with refused("invalid-input"):
        decode_b64("image", data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_exif_orientation_is_applied_as_a_viewer_shows_the_picture(fmt: str) -> None:
    """A phone stores the sensor's pixels and an Orientation: the model saw the 7 lying on its
    side, and answered 4."""
    upright = Image.open(io.BytesIO(sample_png(7))).convert("L")
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, fmt, exif=exif, **({"quality": 100} if fmt == "JPEG" else {}))
    decoded = decode_image("image", buffer.getvalue(), SPEC, f"image/{fmt.lower()}")
    expected = decode_image("image", encoded(upright, fmt), SPEC, f"image/{fmt.lower()}")
    assert np.abs(decoded - expected).mean() < 0.02
    sideways = decode_image("image", encoded(stored, fmt), SPEC, f"image/{fmt.lower()}")
    assert np.abs(sideways - expected).mean() > 0.05


def test_an_exif_block_pillow_cannot_parse_is_no_reason_to_refuse_the_image() -> None:
    """Handing the block to Pillow's EXIF parser made a PNG whose eXIf is not TIFF a 400."""
    upright = Image.open(io.BytesIO(sample_png(3))).convert("L")
    buffer = io.BytesIO()
    upright.save(buffer, "PNG", exif=b"Exif\0\0not a tiff header at all")
    decoded = decode_image("image", buffer.getvalue(), SPEC, "image/png")
    assert np.array_equal(decoded, decode_image("image", encoded(upright), SPEC, "image/png"))


def tiff_with(entries: list[tuple[int, int, int, int]], order: str = ">") -> bytes:
    """An EXIF block: a TIFF header and IFD0 with (tag, type, count, value) entries."""
    mark = b"MM" if order == ">" else b"II"
    ifd = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack(order + "HHIHH", tag, kind, count, value, 0)
    return b"Exif\0\0" + mark + struct.pack(order + "HI", 42, 8) + ifd + b"\0\0\0\0"


@pytest.mark.parametrize("order", [">", "<"])
def test_the_orientation_is_read_from_the_first_entries_of_ifd0_only(order: str) -> None:
    """A crafted block of 65,535 tags cost two seconds an image when parsed whole."""
    make = (0x010F, 2, 4, 0)
    assert exif_orientation(tiff_with([make, (0x0112, 3, 1, 6)], order)) == 6
    assert exif_orientation(tiff_with([make] * 100 + [(0x0112, 3, 1, 6)], order)) == 1
    assert exif_orientation(tiff_with([(0x0112, 3, 1, 9)], order)) == 1  # no such orientation
    assert exif_orientation(tiff_with([(0x0112, 4, 1, 6)], order)) == 1  # not one SHORT
    assert exif_orientation(tiff_with([(0x0112, 3, 1, 6)], order)[:20]) == 1  # cut short
    assert exif_orientation(b"") == exif_orientation(b"Exif\0\0MM\0*\xff\xff\xff\xff") == 1


def test_no_image_is_decoded_once_the_deadline_has_passed() -> None:
    images = [EncodedImage("image", sample_png(1), SPEC, "image/png")]
    with refused("deadline-exceeded") as caught:
        decode_images(images, deadline=time.monotonic())
    assert caught.value.status == 504
    assert decode_images(images, deadline=time.monotonic() + 60)[0].shape == (1, 28, 28)
