"""PNG chunks, JPEG header segments and GIF blocks are counted before Pillow reads them.

Pillow reads them one by one in Python, holding the GIL: a 10 MB file of tiny ones held the
event loop for seconds. A file with more than its format's limit is refused undecoded; the
limits are lowered here so that the files stay small.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from app.errors import Problem
from app.inference import image_structure
from app.inference.images import EncodedImage, decode_images
from models.demo import sample_png
from models.manifest import ImageSpec

SPEC = ImageSpec(
    mode="L", height=28, width=28, formats=("PNG", "JPEG", "GIF"), max_pixels=4096 * 4096
)
LIMITS = {
    "PNG_MAX_CHUNKS": 16,
    "JPEG_MAX_SEGMENTS": 16,
    "JPEG_MAX_FILL_BYTES": 32,
    "JPEG_MAX_HEADER_ENTRIES": 32,
    "GIF_MAX_BLOCKS": 32,
}


@pytest.fixture
def low_limits(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    for name, value in LIMITS.items():
        monkeypatch.setattr(image_structure, name, value)
    return LIMITS


@pytest.fixture
def no_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Image.open fails the test: a refusal must come before Pillow reads anything."""

    def opened(*args: Any, **kwargs: Any) -> Image.Image:
        raise AssertionError("Pillow opened the image")

    monkeypatch.setattr(Image, "open", opened)


def decode(raw: bytes, content_type: str | None = None) -> np.ndarray:
    return decode_images([EncodedImage("image", raw, SPEC, content_type)])[0]


def refusal(raw: bytes, content_type: str | None = None) -> str:
    with pytest.raises(Problem) as caught:
        decode(raw, content_type)
    assert caught.value.code == "invalid-input" and caught.value.status == 422
    return caught.value.detail


def saved(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png(before: bytes = b"", after: bytes = b"", idat_size: int = 0) -> bytes:
    """A 28 x 28 PNG with chunks added before or after its IDAT, or its IDAT in pieces."""
    pixels = zlib.compress(b"".join(b"\x00" + bytes(range(28)) for _ in range(28)))
    size = idat_size or len(pixels)
    idats = b"".join(chunk(b"IDAT", pixels[i : i + size]) for i in range(0, len(pixels), size))
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + before + idats + after + chunk(b"IEND", b"")


def png_chunks(raw: bytes) -> int:
    count, pos = 0, 8
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        count, pos = count + 1, pos + 12 + length
    return count


def jpeg(after_soi: bytes = b"", **params: Any) -> bytes:
    raw = saved(Image.new("L", (28, 28), 128), "JPEG", **params)
    return raw[:2] + after_soi + raw[2:]


def jpeg_segments(raw: bytes) -> int:
    """The segments from after SOI to the first SOS, SOS included (a plain Pillow JPEG's)."""
    count, pos = 0, 2
    while True:
        count += 1
        if raw[pos + 1] == 0xDA:
            return count
        pos += 2 + struct.unpack(">H", raw[pos + 2 : pos + 4])[0]


def segment(marker: int, data: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(data) + 2) + data


def gif(before_image: bytes = b"") -> bytes:
    raw = saved(Image.new("L", (28, 28), 7), "GIF")
    first_image = raw.index(b",")
    return raw[:first_image] + before_image + raw[first_image:]


# PNG


@pytest.mark.usefixtures("low_limits", "no_pillow")
@pytest.mark.parametrize(
    "raw",
    [
        png(before=chunk(b"prVt", b"") * 16),
        png(before=chunk(b"tEXt", b"a\x00") * 16),
        png(after=chunk(b"prVt", b"") * 16),
        png(idat_size=1),
    ],
    ids=["unknown-before-idat", "text-before-idat", "unknown-after-idat", "1-byte-idats"],
)
def test_a_png_of_too_many_chunks_is_refused_before_pillow_reads_it(raw: bytes) -> None:
    assert png_chunks(raw) > 16 and len(raw) < 2000
    assert refusal(raw) == "image is a PNG of more than 16 chunks"


@pytest.mark.usefixtures("low_limits")
def test_a_png_at_the_chunk_limit_still_decodes() -> None:
    raw = png(before=chunk(b"tEXt", b"a\x00") * 13)
    assert png_chunks(raw) == 16  # IHDR, 13 tEXt, IDAT, IEND
    assert decode(raw).shape == (1, 28, 28)


def test_the_chunk_limit_grows_with_a_large_file(
    low_limits: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = png(idat_size=1)  # a chunk per 13 bytes, within a limit of one per 8
    monkeypatch.setattr(image_structure, "PNG_BYTES_PER_CHUNK", 8)
    assert png_chunks(raw) > low_limits["PNG_MAX_CHUNKS"]
    assert decode(raw).shape == (1, 28, 28)
    monkeypatch.setattr(image_structure, "PNG_BYTES_PER_CHUNK", 64)
    assert "chunks" in refusal(raw)


def test_chunks_after_iend_are_not_counted(low_limits: dict[str, int]) -> None:
    raw = png() + chunk(b"prVt", b"") * 32
    assert decode(raw).shape == (1, 28, 28)


def test_a_broken_png_structure_is_left_to_pillow_to_refuse(low_limits: dict[str, int]) -> None:
    raw = png(before=struct.pack(">I", 1 << 31) + b"prVt")  # a chunk running past the end
    assert refusal(raw) == "image is not an image in an accepted format (PNG, JPEG, GIF)"


def text_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    for k in range(50):
        info.add_text(f"key{k}", "value " * 10)
    return saved(Image.new("L", (28, 28), 9), "PNG", pnginfo=info)


def libpng_chunked() -> bytes:
    """A 512 x 512 RGB noise PNG with its IDAT in libpng's 8 kB chunks: 97 chunks of it."""
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    raw = saved(Image.fromarray(noise), "PNG")
    idat = raw.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", raw[idat : idat + 4])
    data = raw[idat + 8 : idat + 8 + length]
    pieces = b"".join(chunk(b"IDAT", data[i : i + 8192]) for i in range(0, len(data), 8192))
    return raw[:idat] + pieces + raw[idat + 12 + length :]


def apng() -> bytes:
    frames = [Image.new("L", (28, 28), i) for i in range(50)]
    return saved(frames[0], "PNG", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize(
    "make",
    [
        lambda: sample_png(3),
        lambda: saved(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG", optimize=True),
        text_png,
        libpng_chunked,
        apng,
        lambda: saved(Image.new("I;16", (28, 28), 40000), "PNG"),
    ],
    ids=["demo", "optimized", "50-text-chunks", "8kB-idat-chunks", "apng", "16-bit"],
)
def test_real_pngs_still_decode(make: Callable[[], bytes]) -> None:
    assert decode(make(), "image/png").shape == (1, 28, 28)


# JPEG


@pytest.mark.usefixtures("low_limits", "no_pillow")
@pytest.mark.parametrize(
    "raw",
    [
        jpeg(b"\xff" * 33),
        jpeg(segment(0xFE, b"") + b"\x00" * 33),
        jpeg(b"\xff\x00" * 33),
        jpeg(segment(0xFE, b"") + b"\x00" * 16 + b"\xff" * 17),
    ],
    ids=["fill", "stray", "stuffed", "stray-and-fill"],
)
def test_a_jpeg_of_too_many_fill_bytes_is_refused_before_pillow_reads_it(raw: bytes) -> None:
    assert refusal(raw) == "image is a JPEG of more than 32 fill bytes before its first scan"


@pytest.mark.usefixtures("low_limits")
def test_a_jpeg_at_the_fill_limit_still_decodes() -> None:
    assert decode(jpeg(b"\xff" * 32)).shape == (1, 28, 28)


@pytest.mark.usefixtures("low_limits", "no_pillow")
@pytest.mark.parametrize("marker", [0xFE, 0xE1, 0xEF], ids=["COM", "APP1", "APP15"])
def test_a_jpeg_of_too_many_segments_is_refused_before_pillow_reads_it(marker: int) -> None:
    raw = jpeg(segment(marker, b"") * 16)
    assert jpeg_segments(raw) > 16
    assert refusal(raw) == "image is a JPEG of more than 16 segments before its first scan"


@pytest.mark.usefixtures("low_limits")
def test_a_jpeg_at_the_segment_limit_still_decodes() -> None:
    plain = jpeg()
    raw = jpeg(segment(0xFE, b"") * (16 - jpeg_segments(plain)))
    assert jpeg_segments(raw) == 16
    assert decode(raw).shape == (1, 28, 28)


def exif_segment(tags: int) -> bytes:
    """An APP1 Exif segment whose first IFD holds `tags` tags."""
    entries = b"".join(struct.pack(">HHHHI", 0xC000 + i, 3, 0, 1, 0) for i in range(tags))
    ifd = struct.pack(">H", tags) + entries + struct.pack(">I", 0)
    return segment(0xE1, b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + ifd)


@pytest.mark.usefixtures("low_limits", "no_pillow")
@pytest.mark.parametrize(
    "header",
    [
        segment(0xDB, (b"\x00" + bytes(range(1, 65))) * 33),  # 33 quantization tables
        segment(0xC0, b"\x08\x00\x1c\x00\x1c\x01" + b"\x01\x11\x00" * 33),  # 33 components
        segment(0xED, b"Photoshop 3.0\x00" + (b"8BIM\x04\x04\x00\x00" + bytes(4)) * 33),
    ],
    ids=["DQT", "SOF", "Photoshop-resources"],
)
def test_a_jpeg_of_too_many_header_entries_is_refused_before_pillow_reads_it(
    header: bytes,
) -> None:
    assert refusal(jpeg(header)) == (
        "image is a JPEG of more than 32 tables, components and other header entries"
        " before its first scan"
    )


@pytest.mark.usefixtures("low_limits")
def test_exif_segments_are_not_counted_by_their_bytes() -> None:
    """A camera's second Exif segment (a thumbnail, a MakerNote) holds bytes, not tags: counted
    as tags, a real 826 KB photo was refused."""
    assert decode(jpeg(exif_segment(100))).shape == (1, 28, 28)
    assert decode(jpeg(exif_segment(2) + exif_segment(100))).shape == (1, 28, 28)


def exif() -> Image.Exif:
    tags = Image.Exif()
    tags[0x010F], tags[0x0110], tags[0x0131] = "Maker", "Model", "Software"
    return tags


def icc_profile() -> bytes:
    return bytes(np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8))


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"progressive": True},
        {"qtables": [[300] * 64]},  # a table of 16-bit values
        {"exif": exif(), "icc_profile": icc_profile()},  # the profile in 4 APP2 segments
        {"mode": "CMYK"},
        {"mode": "CMYK", "progressive": True},
        {"mode": "RGB", "subsampling": 0, "comment": b"a comment"},
    ],
    ids=["baseline", "progressive", "16-bit-tables", "exif-and-icc", "cmyk", "cmyk-prog", "rgb"],
)
def test_real_jpegs_still_decode(params: dict[str, Any]) -> None:
    mode = params.pop("mode", "L")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, len(mode)), dtype=np.uint8)
    raw = saved(Image.fromarray(noise.squeeze(), mode), "JPEG", **params)
    assert decode(raw, "image/jpeg").shape == (1, 28, 28)


# GIF


@pytest.mark.usefixtures("low_limits", "no_pillow")
@pytest.mark.parametrize(
    "raw",
    [
        gif(b"!\xfe" + b"\x01c" * 32 + b"\x00"),  # a comment in 1-byte sub-blocks
        gif(b"!\xf9\x04\x00\x00\x00\x00\x00" * 17),  # graphic control extensions
        gif(b"\x00" * 33),  # stray bytes
    ],
    ids=["comment-sub-blocks", "graphic-control-extensions", "stray"],
)
def test_a_gif_of_too_many_blocks_is_refused_before_pillow_reads_it(raw: bytes) -> None:
    assert refusal(raw) == "image is a GIF of more than 32 blocks before its first image"


@pytest.mark.usefixtures("low_limits")
def test_a_gif_at_the_block_limit_still_decodes() -> None:
    raw = gif(b"!\xfe" + b"\x01c" * 31 + b"\x00")  # the extension and its 31 sub-blocks
    assert decode(raw).shape == (1, 28, 28)


def test_real_gifs_still_decode() -> None:
    frames = [Image.new("L", (28, 28), i) for i in range(50)]
    raw = saved(frames[0], "GIF", save_all=True, append_images=frames[1:], comment=b"x" * 1000)
    assert decode(raw, "image/gif").shape == (1, 28, 28)


# Whatever the content type


@pytest.mark.usefixtures("low_limits", "no_pillow")
@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "image/png"])
def test_the_signature_decides_which_structure_is_walked(content_type: str | None) -> None:
    assert "JPEG" in refusal(jpeg(b"\xff" * 33), content_type)


def test_a_refusal_comes_at_the_default_limits_too() -> None:
    raw = png(before=chunk(b"prVt", b"") * image_structure.PNG_MAX_CHUNKS)
    assert refusal(raw) == f"image is a PNG of more than {image_structure.PNG_MAX_CHUNKS} chunks"


def test_a_pngs_text_chunks_are_dropped_unread_and_its_pixels_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pillow inflated each compressed text chunk (up to 1 MB) and kept it: 63 of them in a 66 KB
    PNG took 63 MB and 0.3 s to open, 128 such images a request."""
    inflated: list[int] = []
    original = PngImagePlugin._safe_zlib_decompress

    def counting(data: bytes) -> bytes:
        out = original(data)
        inflated.append(len(out))
        return out

    monkeypatch.setattr(PngImagePlugin, "_safe_zlib_decompress", counting)
    text = zlib.compress(b"A" * (1024 * 1024 - 16), 9)
    bomb = b"".join(chunk(b"zTXt", b"k%d\x00\x00" % i + text) for i in range(20))
    itxt = chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00<x/>")
    raw = png(
        before=bomb + chunk(b"tEXt", b"Comment\x00hi") + itxt, after=chunk(b"tEXt", b"a\x00b")
    )
    assert np.array_equal(decode(raw), decode(png()))
    assert inflated == []  # not one text chunk was inflated


def test_an_orientation_in_a_text_chunk_keyed_exif_is_still_applied() -> None:
    """Pillow reads Exif from a tEXt chunk keyed "exif" too: that chunk is not dropped."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise to view
    digit = Image.open(io.BytesIO(sample_png(7)))
    raw = saved(digit, "PNG")
    tagged = raw[:33] + chunk(b"tEXt", b"exif\x00" + exif.tobytes()) + raw[33:]
    upright = saved(digit.transpose(Image.Transpose.ROTATE_270), "PNG")
    assert np.array_equal(decode(tagged), decode(upright))


def test_a_text_chunk_cut_short_is_left_for_pillow_to_refuse() -> None:
    cut = png(before=chunk(b"tEXt", b"Comment\x00" + b"x" * 100))[:60]
    assert "not an image" in refusal(cut)
