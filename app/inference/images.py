"""Encoded images -> arrays, under limits checked before any pixel is decoded.

Decoding costs time per pixel whatever the encoded size (a 702-byte lossless WebP of 4096 x
4096 takes about 0.4 s), so besides each image's own limits (`ImageSpec.max_size_mb`,
`max_pixels`) a request's images together may declare at most `REQUEST_MAX_PIXELS` pixels, or
the largest single image a spec allows where that is more: all of it read from the headers
before any image is decoded. A JPEG's decoding also costs time per scan: its scans are
counted and limited (`JPEG_MAX_SCANS`) before decoding too. Decoding is CPU work: callers on an
event loop run `decode_images` in a worker thread.

Opening an image costs time too, whatever its pixels: Pillow reads a PNG's chunks, a JPEG's
segments before its first scan and a GIF's blocks before its first image in Python, holding the
GIL (so the event loop stalls with the worker), at about 1 us a byte where they are tiny: 10 MB
of empty PNG chunks held it 13 s. Their structure is walked first, cheaply and with a bound, and
an image whose structure no encoder writes is refused before Pillow sees it (`PNG_MAX_CHUNKS`,
`JPEG_MAX_SEGMENTS`, `JPEG_MAX_FILL_BYTES`, `JPEG_MAX_HEADER_ENTRIES`, `GIF_MAX_BLOCKS`).
A PNG's compressed text chunks are removed before Pillow reads it (`_without_png_text`).
"""

from __future__ import annotations

import binascii
import io
import math
import re
import struct
import time
import warnings
from base64 import b64decode
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.errors import Problem, quoted
from models.manifest import ImageSpec

CONTENT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
# A content type that names no format: the image's own signature bytes decide, within the
# spec's allow-list (as when there is no content type at all).
UNKNOWN_CONTENT_TYPE = "application/octet-stream"
# 32 Mpx: two images at the default `max_pixels` (4096 x 4096), or 40,000 of 28 x 28.
REQUEST_MAX_PIXELS = 32 * 1024 * 1024
# Decoding a progressive JPEG walks every block of the image once per scan, so its cost grows
# with the number of scans, which the pixel and size limits do not bound: an AC scan of a flat
# image is a few bytes whatever its size (EOB runs), and a 234 kB JPEG of 4096 x 4096 with 3,000
# such scans took 16 s. libjpeg's progressive scripts write 6 scans (grayscale), 10 (YCbCr) or
# 18 (CMYK), and a thumbnail or an MPO's other pictures add their own: 100 leaves room for
# those, and 100 tiny scans of a 4096 x 4096 image cost about 0.6 s, what a legitimate
# progressive JPEG of that size takes (0.5 s). Scans that cost more carry at least a bit per
# block, so `max_size_mb` bounds them.
JPEG_MAX_SCANS = 100
# Pillow reads a PNG's chunks one by one in Python (about 16 us a chunk when they are empty: 13 s
# for the 800,000 that fit in 10 MB), those before IDAT when opening and the rest when loading,
# so every chunk up to IEND is counted. libpng writes IDAT in 8 kB chunks (Pillow in 64 kB
# ones): a 10 MB PNG holds about 1,300 chunks, with its text and other metadata a few dozen
# more. 4,096 allow that for files up to 32 MB, and one chunk per 4 kB (half libpng's size)
# for larger ones where a spec allows them; 4,096 chunks cost Pillow about 65 ms. An APNG's
# frames take two chunks or more each, so one of more than about 2,000 frames is refused.
PNG_MAX_CHUNKS = 4096
PNG_BYTES_PER_CHUNK = 4096
# Pillow reads a JPEG up to its first scan in Python (libjpeg decodes the rest in C), a turn of
# its loop per segment (4 us), per fill byte (0xFF before a marker) and per stray byte between
# segments (1.4 us), and inside segments per quantization table, frame component, Photoshop
# resource and Exif tag (up to 5 us). Encoders write a dozen segments (APPn, DQT, SOF, DHT),
# a few dozen with Exif, XMP and an ICC profile in 64 kB pieces: 1,024 leave room for a 60 MB
# profile. They write no fill bytes, or a few: the format allows any number, 1,024 are plenty.
# Real headers hold at most 4 tables, 4 components, a hundred Photoshop resources and one Exif
# segment (a second one's tags are counted, as Pillow appends it to the first): 1,024 entries.
# At these limits the walk costs 2 ms at most, Pillow 10 to 20 ms.
JPEG_MAX_SEGMENTS = 1024
JPEG_MAX_FILL_BYTES = 1024
JPEG_MAX_HEADER_ENTRIES = 1024
# Pillow reads a GIF's extensions before its first image one sub-block at a time in Python (0.5
# to 3 us each: 4 MB of 1-byte comment sub-blocks took 1 s). Encoders write a few extensions
# (loop count, graphic control, comment, XMP, an ICC profile) in sub-blocks of up to 255
# bytes: 4,096 blocks hold 1 MB of metadata, and cost Pillow about 10 ms. GIF is opt-in.
GIF_MAX_BLOCKS = 4096


@dataclass(frozen=True)
class EncodedImage:
    """One image as it came in, for the input (and item) that `field` names."""

    field: str
    raw: bytes
    spec: ImageSpec
    content_type: str | None


def decode_b64(field: str, data: object) -> bytes:
    if not isinstance(data, str):
        raise Problem("invalid-input", f"{field}.b64 must be a base64 string")
    try:
        return b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Problem("invalid-input", f"{field}.b64 is not valid base64") from None


def decode_images(images: Sequence[EncodedImage], deadline: float = math.inf) -> list[np.ndarray]:
    """Each image as a float32 array of shape (C, H, W), scaled as its spec says.

    Every image's size, format and declared pixels, and the request's pixel budget, are
    checked before any is decoded. Slow: run it off the event loop. Past `deadline`
    (`time.monotonic()`) no further image is decoded, and the request gets its 504: images
    within the budget took 20 s to decode here.
    """
    budget = max([REQUEST_MAX_PIXELS, *(image.spec.max_pixels for image in images)])
    with ExitStack() as stack:
        opened = [stack.enter_context(_open(image)) for image in images]
        if sum(im.width * im.height for im in opened) > budget:
            raise Problem(
                "invalid-input", f"the images of one request may have at most {budget} pixels"
            )
        decoded = []
        for image, im in zip(images, opened, strict=True):
            if time.monotonic() >= deadline:
                raise Problem("deadline-exceeded", "the deadline passed while decoding images")
            decoded.append(_decode(image, im))
        return decoded


def _open(image: EncodedImage) -> Image.Image:
    """The image with its header read, its format and size checked; no pixel decoded yet."""
    field, spec = image.field, image.spec
    if len(image.raw) > spec.max_size_mb * 1024 * 1024:
        raise Problem("payload-too-large", f"{field} is larger than {spec.max_size_mb:g} MB")
    if image.content_type is not None:
        # Media types are case-insensitive and may carry parameters (RFC 9110 8.3.1).
        media_type = image.content_type.split(";", 1)[0].strip().lower()
        if media_type != UNKNOWN_CONTENT_TYPE and CONTENT_TYPES.get(media_type) not in spec.formats:
            raise Problem(
                "unsupported-media-type", f"{field}: {quoted(media_type)} is not accepted"
            )
    if (excess := _structure_excess(image.raw)) is not None:
        raise Problem("invalid-input", f"{field} is {excess}")
    raw = _without_png_text(image.raw)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is stricter; Pillow's bomb warning must not escalate.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(raw), formats=list(spec.formats))
    except Image.DecompressionBombError:
        raise Problem("invalid-input", f"{field} has more than {spec.max_pixels} pixels") from None
    except (
        Exception
    ):  # Pillow's parsers raise many types on corrupt input (OSError, SyntaxError, ...)
        raise Problem(
            "invalid-input",
            f"{field} is not an image in an accepted format ({', '.join(spec.formats)})",
        ) from None
    # The header declares the size: refuse decompression bombs before decoding.
    if opened.width * opened.height > spec.max_pixels:
        opened.close()
        raise Problem("invalid-input", f"{field} has more than {spec.max_pixels} pixels")
    if opened.format in ("JPEG", "MPO") and _jpeg_scans(image.raw) > JPEG_MAX_SCANS:
        opened.close()
        raise Problem("invalid-input", f"{field} is a JPEG of more than {JPEG_MAX_SCANS} scans")
    return opened


def _jpeg_scans(raw: bytes) -> int:
    """At least the number of scans in the JPEG: its SOS markers (FF DA) counted undecoded.

    Entropy-coded data stuffs every FF with 00 (or follows it with a restart marker), so FF DA
    appears only as a marker; segments (an Exif thumbnail, an MPO's other pictures) may add a
    few, which the limit allows for.
    """
    return raw.count(b"\xff\xda")


def _structure_excess(raw: bytes) -> str | None:
    """What the image's structure holds beyond its limit, walked undecoded; None if within.

    A structure cut short or broken is left for Pillow to refuse, as it does: only the count
    of the parts it would read one by one is judged here, and each step of a walk counts one.
    """
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_excess(raw)
    if raw.startswith(b"\xff\xd8\xff"):
        return _jpeg_excess(raw)
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return _gif_excess(raw)
    return None


_PNG_CHUNK = struct.Struct(">I4s")


def _png_excess(raw: bytes) -> str | None:
    """More chunks up to IEND than the limit: a jump from chunk header to chunk header."""
    limit = max(PNG_MAX_CHUNKS, len(raw) // PNG_BYTES_PER_CHUNK)
    pos, chunks, end = 8, 0, len(raw) - _PNG_CHUNK.size
    while pos <= end:
        length, kind = _PNG_CHUNK.unpack_from(raw, pos)
        chunks += 1
        if chunks > limit:
            return f"a PNG of more than {limit} chunks"
        if kind == b"IEND":
            break
        pos += 12 + length  # length and type, data, CRC
    return None


# Compressed text: zTXt always, iTXt optionally. Plain tEXt is kept: it costs no more than
# its own bytes, and Pillow reads Exif (the orientation) from a tEXt chunk keyed "exif".
_PNG_TEXT = frozenset([b"zTXt", b"iTXt"])


def _without_png_text(raw: bytes) -> bytes:
    """A PNG without its compressed text chunks (other images as they are).

    Pillow inflates every compressed text chunk when it opens a PNG, up to 1 MB each and 64 MB
    an image, and keeps the text: a 66 KB PNG of 63 such chunks took 63 MB and 0.3 s, and a
    request carries up to 128 images. That text (comments, XMP) says nothing the decoding
    reads (the orientation is Exif: an eXIf chunk, or tEXt keyed "exif"), so it is dropped
    unread; a chunk cut short is left for Pillow to refuse.
    """
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return raw
    kept, start, pos, end = [], 0, 8, len(raw) - _PNG_CHUNK.size
    while pos <= end:  # at most PNG_MAX_CHUNKS steps: _png_excess has counted them
        length, kind = _PNG_CHUNK.unpack_from(raw, pos)
        following = pos + 12 + length  # length and type, data, CRC
        if kind in _PNG_TEXT and following <= len(raw):
            kept.append(raw[start:pos])
            start = following
        if kind == b"IEND":
            break
        pos = following
    return b"".join([*kept, raw[start:]]) if kept else raw


# Markers that Pillow reads without a length (its handler is None): JPG, RSTn, SOI, EOI, JPGn.
_JPEG_STANDALONE = frozenset([0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)])
# Frame headers (SOFn, and DHP, read alike), whose components Pillow reads one by one.
_JPEG_FRAMES = frozenset([*range(0xC0, 0xD0), 0xDE]) - {0xC4, 0xC8, 0xCC}
_JPEG_FILL = re.compile(b"\xff+")


def _jpeg_excess(raw: bytes) -> str | None:
    """More segments, fill bytes or header entries before the first scan than the limits.

    The walk follows Pillow's (`JpegImageFile._open`), so it counts the turns Pillow's loop
    would take; runs of stray and fill bytes are measured in C (`find`, a bounded match).
    """
    pos, end = 2, len(raw)
    segments = fill = entries = 0
    while True:
        ff = raw.find(b"\xff", pos)
        if ff < 0:
            return None
        fill_run = _JPEG_FILL.match(raw, ff, ff + JPEG_MAX_FILL_BYTES + 2)  # bounded, in C
        run = fill_run.end() - ff if fill_run else 1
        fill += ff - pos + run - 1  # stray bytes, then 0xFF bytes but the marker's own
        if fill > JPEG_MAX_FILL_BYTES:
            return f"a JPEG of more than {JPEG_MAX_FILL_BYTES} fill bytes before its first scan"
        pos = ff + run + 1
        if pos > end:
            return None
        marker = raw[pos - 1]
        if marker == 0:  # a stuffed FF 00, skipped as a stray
            fill += 1
            continue
        if marker < 0xC0:  # no marker: Pillow refuses the file
            return None
        segments += 1
        if segments > JPEG_MAX_SEGMENTS:
            return f"a JPEG of more than {JPEG_MAX_SEGMENTS} segments before its first scan"
        if marker == 0xDA:
            return None
        if marker in _JPEG_STANDALONE:
            continue
        start = pos + 2
        pos += max(2, int.from_bytes(raw[pos : pos + 2], "big"))  # Pillow reads no less
        entries += _jpeg_entries(raw, marker, start, pos)
        if entries > JPEG_MAX_HEADER_ENTRIES:
            return (
                f"a JPEG of more than {JPEG_MAX_HEADER_ENTRIES} tables, components and other"
                " header entries before its first scan"
            )


def _jpeg_entries(raw: bytes, marker: int, start: int, end: int) -> int:
    """At least how many entries Pillow reads one by one in the segment's data, start to end.

    Exif is not counted: Pillow joins the Exif segments and reads the first IFD's tags, at most
    65,535 by the format (about 0.3 s), and a thumbnail or MakerNote in a second segment holds
    bytes, not tags (counting them as tags refused real camera files).
    """
    size = end - start
    if marker == 0xDB:  # tables of 65 bytes, or of 129 with 16-bit values
        return -(-size // 65)
    if marker in _JPEG_FRAMES:  # 6 bytes, then 3 per component
        return max(0, -(-(size - 6) // 3))
    if marker == 0xED and raw.startswith(b"Photoshop 3.0\x00", start):
        return raw.count(b"8BIM", start, end)  # each resource starts with one
    return 0


def _gif_excess(raw: bytes) -> str | None:
    """More blocks before the first image than the limit: extensions, sub-blocks, strays."""
    flags = raw[10] if len(raw) > 10 else 0
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global palette
    blocks, end = 0, len(raw)
    while pos < end and blocks <= GIF_MAX_BLOCKS:
        introducer = raw[pos]
        if introducer in b",;":  # the first image, or the end
            return None
        blocks += 1
        pos += 2 if introducer == 0x21 else 1  # an extension's introducer and label
        if introducer == 0x21:
            while pos < end and raw[pos] and blocks <= GIF_MAX_BLOCKS:
                blocks += 1
                pos += 1 + raw[pos]
            pos += 1  # the terminator
    if blocks > GIF_MAX_BLOCKS:
        return f"a GIF of more than {GIF_MAX_BLOCKS} blocks before its first image"
    return None


_ORIENTATION = 0x0112
_MAX_IFD_ENTRIES = 64  # a camera writes Orientation among IFD0's first entries (sorted by tag)
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(exif: bytes) -> int:
    """The EXIF Orientation (1 to 8), 1 when absent or unreadable. Read from IFD0's first
    entries only: Pillow parses a whole EXIF block (a crafted one of 65,535 tags cost two
    seconds an image, and one it could not parse failed the decode)."""
    tiff = exif[6:] if exif.startswith(b"Exif\0\0") else exif
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    (offset,) = struct.unpack_from(order + "I", tiff, 4)
    if offset + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    for entry in range(offset + 2, offset + 2 + 12 * min(count, _MAX_IFD_ENTRIES), 12):
        if entry + 12 > len(tiff):
            return 1
        tag, kind, values = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == _ORIENTATION:
            (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
            return value if kind == 3 and values == 1 and 1 <= value <= 8 else 1  # one SHORT
    return 1


def _decode(image: EncodedImage, opened: Image.Image) -> np.ndarray:
    spec = image.spec
    try:
        opened.load()
        # As a viewer shows it: phone cameras store the sensor's pixels and an EXIF
        # Orientation, and a model must not see a portrait photo lying on its side.
        exif = opened.info.get("exif")
        turn = _TRANSPOSES.get(exif_orientation(exif)) if isinstance(exif, bytes) else None
        upright = opened.transpose(turn) if turn is not None else opened
        converted = _eight_bit(upright).convert(spec.mode)
        if converted.size != (spec.width, spec.height):
            converted = converted.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    except (
        Exception
    ):  # corrupt data: Pillow's decoders raise SyntaxError, EOFError, struct.error, ...
        raise Problem("invalid-input", f"{image.field} could not be decoded") from None
    array = np.asarray(converted, dtype=np.float32) * np.float32(spec.scale)
    if spec.invert:
        array = np.float32(255 * spec.scale) - array
    return array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)


def _eight_bit(opened: Image.Image) -> Image.Image:
    """A 16-bit grayscale image (a PNG's: Pillow opens it as I;16 or I) scaled to 8-bit L.

    Pillow's `convert` clips such values instead of scaling them: everything above 255 would
    turn white, and the model would answer for another picture. The high byte is what an 8-bit
    image of the same picture holds. Other modes convert as they are.
    """
    if not (opened.mode.startswith("I;16") or opened.mode == "I"):
        return opened
    pixels = np.asarray(opened) >> 8  # in place of a wider copy: a 4096 x 4096 image is 32 MB
    if pixels.dtype.itemsize > 2:  # mode I holds 32-bit values: clip what 16 bits cannot hold
        np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8), mode="L")
