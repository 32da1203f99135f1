"""Encoded images -> arrays, under limits checked before any pixel is decoded.

Decoding costs time per pixel whatever the encoded size (a 702-byte lossless WebP of 4096 x
4096 takes about 0.4 s), so besides each image's own limits (`ImageSpec.max_size_mb`,
`max_pixels`) a request's images together may declare at most `REQUEST_MAX_PIXELS` pixels, or
the largest single image a spec allows where that is more: all of it read from the headers
before any image is decoded. No side may exceed `MAX_SIDE` (or the spec's own, where larger):
a picture of one pixel by 16 million cost 30 times a square one's time and 25 times its memory
(a PNG's rows are decoded one at a time, and the resize's first pass is as long as the long
side). Opening an image costs time too, before its pixels: `app.inference.image_structure`
walks and bounds what Pillow would read. Decoding is CPU work: callers on an event loop run
`decode_images` in a worker thread.
"""

from __future__ import annotations

import binascii
import io
import math
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
from app.inference.image_structure import (
    JPEG_MAX_SCANS,
    OVER_REQUEST,
    jpeg_scans,
    request_budget,
    walk,
    without_png_text,
)
from models.manifest import ImageSpec

CONTENT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
# A content type that names no format: the image's own signature bytes decide, within the
# spec's allow-list (as when there is no content type at all).
UNKNOWN_CONTENT_TYPE = "application/octet-stream"
# 32 Mpx: two images at the default `max_pixels` (4096 x 4096), or 40,000 of 28 x 28.
REQUEST_MAX_PIXELS = 32 * 1024 * 1024
# 16,384: a 4096 x 4096 image's pixels as a 16,384 x 1,024 panorama, and what WebP allows.
MAX_SIDE = 16_384


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

    Every image's size, format, structure and declared pixels, and the request's pixel and
    structure budgets, are checked before any is decoded. Slow: run it off the event loop.
    Past `deadline` (`time.monotonic()`) no further image is opened or decoded, and the request
    gets its 504: images within every limit took 20 s to decode here.
    """
    budget = max([REQUEST_MAX_PIXELS, *(image.spec.max_pixels for image in images)])
    steps = request_budget([len(image.raw) for image in images])
    with ExitStack() as stack:
        opened = []
        for image in images:
            _check_deadline(deadline)
            im, walked = _open(image, steps)
            opened.append(stack.enter_context(im))
            steps -= walked
        if sum(im.width * im.height for im in opened) > budget:
            raise Problem(
                "invalid-input", f"the images of one request may have at most {budget} pixels"
            )
        decoded = []
        for image, im in zip(images, opened, strict=True):
            _check_deadline(deadline)
            decoded.append(_decode(image, im))
        return decoded


def _check_deadline(deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise Problem("deadline-exceeded", "the deadline passed while decoding images")


def _open(image: EncodedImage, steps: int) -> tuple[Image.Image, int]:
    """The image with its header read, its format and size checked, and the steps its
    structure took of the `steps` left to the request; no pixel decoded yet."""
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
    walked, excess = walk(image.raw, steps)
    if excess == OVER_REQUEST:
        # A budget, not one image's fault: the client should send fewer images at once.
        detail = "the images of one request hold too many chunks, segments or blocks together"
        raise Problem("invalid-input", f"{detail}; send fewer at a time")
    if excess is not None:
        raise Problem("invalid-input", f"{field} is {excess}")
    raw = without_png_text(image.raw)
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
    refusal = None
    max_side = max(MAX_SIDE, spec.width, spec.height)
    if opened.width * opened.height > spec.max_pixels:
        refusal = f"{field} has more than {spec.max_pixels} pixels"
    elif max(opened.size) > max_side:
        refusal = f"{field} is {opened.width} x {opened.height}: at most {max_side} a side"
    elif opened.format in ("JPEG", "MPO") and jpeg_scans(image.raw) > JPEG_MAX_SCANS:
        refusal = f"{field} is a JPEG of more than {JPEG_MAX_SCANS} scans"
    if refusal is not None:
        opened.close()
        raise Problem("invalid-input", refusal)
    return opened, walked


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
