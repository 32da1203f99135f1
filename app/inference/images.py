"""Encoded images -> arrays, under limits checked before any pixel is decoded.

Decoding costs time per pixel whatever the encoded size (a 702-byte lossless WebP of 4096 x
4096 takes about 0.4 s), so besides each image's own limits (`ImageSpec.max_size_mb`,
`max_pixels`) a request's images together may declare at most `REQUEST_MAX_PIXELS` pixels, or
the largest single image a spec allows where that is more: all of it read from the headers
before any image is decoded. A JPEG's decoding also costs time per scan: its scans are
counted and limited (`JPEG_MAX_SCANS`) before decoding too. Decoding is CPU work: callers on an
event loop run `decode_images` in a worker thread.
"""

from __future__ import annotations

import binascii
import io
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


def decode_images(images: Sequence[EncodedImage]) -> list[np.ndarray]:
    """Each image as a float32 array of shape (C, H, W), scaled as its spec says.

    Every image's size, format and declared pixels, and the request's pixel budget, are
    checked before any is decoded. Slow: run it off the event loop.
    """
    budget = max([REQUEST_MAX_PIXELS, *(image.spec.max_pixels for image in images)])
    with ExitStack() as stack:
        opened = [stack.enter_context(_open(image)) for image in images]
        if sum(im.width * im.height for im in opened) > budget:
            raise Problem(
                "invalid-input", f"the images of one request may have at most {budget} pixels"
            )
        return [_decode(image, im) for image, im in zip(images, opened, strict=True)]


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
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is stricter; Pillow's bomb warning must not escalate.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(image.raw), formats=list(spec.formats))
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


def _decode(image: EncodedImage, opened: Image.Image) -> np.ndarray:
    spec = image.spec
    try:
        opened.load()
        converted = _eight_bit(opened).convert(spec.mode)
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
