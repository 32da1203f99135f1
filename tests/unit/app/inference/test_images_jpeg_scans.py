"""A progressive JPEG's scans are counted before decoding: a scan bomb is refused undecoded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from app.errors import Problem
from app.inference.image_structure import JPEG_MAX_SCANS
from app.inference.images import EncodedImage, decode_images
from models.manifest import ImageSpec

SPEC = ImageSpec(mode="L", height=28, width=28, formats=("PNG", "JPEG"), max_pixels=64 * 64)


def decode_image(raw: bytes, content_type: str = "image/jpeg") -> np.ndarray:
    return decode_images([EncodedImage("image", raw, SPEC, content_type)])[0]


def jpeg(progressive: bool, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), 128).save(buffer, "JPEG", quality=90, progressive=progressive)
    return buffer.getvalue()


def segments(data: bytes) -> list[tuple[int, bytes]]:
    """The JPEG's segments after SOI and before EOI, each with its marker; a scan with its data."""
    found, i = [], 2
    while data[i + 1] != 0xD9:
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        end = i + 2 + length
        if data[i + 1] == 0xDA:  # the entropy-coded data runs to the next marker
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
        found.append((data[i + 1], data[i:end]))
        i = end
    return found


def scan_bomb(extra_scans: int) -> bytes:
    """A progressive JPEG with one of its AC scans (and its Huffman table) repeated."""
    data = jpeg(progressive=True)
    parts = segments(data)
    second_scan = [k for k, (marker, _) in enumerate(parts) if marker == 0xDA][1]
    table = parts[second_scan - 1][1] if parts[second_scan - 1][0] == 0xC4 else b""
    repeated = (table + parts[second_scan][1]) * extra_scans
    return data[:2] + b"".join(s for _, s in parts) + repeated + b"\xff\xd9"


def scans(raw: bytes) -> int:
    return sum(1 for marker, _ in segments(raw) if marker == 0xDA)


def test_a_scan_bomb_is_refused_naming_the_limit_before_any_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = scan_bomb(200)
    assert scans(raw) > 200 and len(raw) < 20_000

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(Problem) as caught:
        decode_image(raw)
    assert caught.value.code == "invalid-input" and caught.value.status == 422
    assert caught.value.detail == f"image is a JPEG of more than {JPEG_MAX_SCANS} scans"


def test_a_scan_bomb_is_refused_whatever_its_content_type() -> None:
    with pytest.raises(Problem, match="scans"):
        decode_image(scan_bomb(200), "application/octet-stream")


def test_a_jpeg_at_the_scan_limit_still_decodes() -> None:
    raw = scan_bomb(0)
    raw = scan_bomb(JPEG_MAX_SCANS - scans(raw))
    assert scans(raw) == JPEG_MAX_SCANS
    assert decode_image(raw).shape == (1, 28, 28)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_a_normal_progressive_jpeg_still_decodes(mode: str) -> None:
    raw = jpeg(progressive=True, mode=mode)
    assert 1 < scans(raw) <= 20
    array = decode_image(raw)
    assert array.shape == (1, 28, 28)
    assert float(np.ptp(array)) < 0.05  # flat, as encoded


def test_a_baseline_jpeg_still_decodes() -> None:
    raw = jpeg(progressive=False)
    assert scans(raw) == 1
    assert np.allclose(decode_image(raw), 128 / 255, atol=0.02)


def test_ff_da_bytes_in_a_png_are_not_counted_as_scans() -> None:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buffer, "PNG")
    png = buffer.getvalue()
    payload = b"\xff\xda" * (JPEG_MAX_SCANS + 1)
    private = b"prVt" + payload
    chunk = struct.pack(">I", len(payload)) + private + struct.pack(">I", zlib.crc32(private))
    raw = png[:33] + chunk + png[33:]  # after the signature and IHDR
    assert raw.count(b"\xff\xda") > JPEG_MAX_SCANS
    assert decode_image(raw, "image/png").shape == (1, 28, 28)
