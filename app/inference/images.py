"""Encoded images -> arrays, under limits checked before any pixel is decoded."""

from __future__ import annotations

import binascii
import io
import warnings
from base64 import b64decode

import numpy as np
from PIL import Image, UnidentifiedImageError

from app.errors import Problem
from models.manifest import ImageSpec

CONTENT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}


def decode_b64(field: str, data: object) -> bytes:
    if not isinstance(data, str):
        raise Problem("invalid-input", f"{field}.b64 must be a base64 string")
    try:
        return b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Problem("invalid-input", f"{field}.b64 is not valid base64") from None


def decode_image(field: str, raw: bytes, spec: ImageSpec, content_type: str | None) -> np.ndarray:
    """One image as a float32 array of shape (C, H, W), scaled as the spec says."""
    if len(raw) > spec.max_size_mb * 1024 * 1024:
        raise Problem("payload-too-large", f"{field} is larger than {spec.max_size_mb:g} MB")
    if content_type is not None and CONTENT_TYPES.get(content_type) not in spec.formats:
        raise Problem("unsupported-media-type", f"{field}: {content_type} is not accepted")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is stricter; Pillow's bomb warning must not escalate.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=list(spec.formats))
    except Image.DecompressionBombError:
        raise Problem("invalid-input", f"{field} has more than {spec.max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError):
        raise Problem(
            "invalid-input",
            f"{field} is not an image in an accepted format ({', '.join(spec.formats)})",
        ) from None
    with image:
        width, height = image.size
        # The header declares the size: refuse decompression bombs before decoding.
        if width * height > spec.max_pixels:
            raise Problem("invalid-input", f"{field} has more than {spec.max_pixels} pixels")
        try:
            image.load()
            converted = image.convert(spec.mode)
        except (OSError, ValueError, Image.DecompressionBombError):
            raise Problem("invalid-input", f"{field} could not be decoded") from None
    if converted.size != (spec.width, spec.height):
        converted = converted.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.float32) * np.float32(spec.scale)
    if spec.invert:
        array = np.float32(255 * spec.scale) - array
    return array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
