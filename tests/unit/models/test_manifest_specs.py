"""What a signature's tensor specs must agree on before a version can be registered."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from models.manifest import ImageSpec, TensorSpec

GRAY = ImageSpec(mode="L", height=28, width=28)
RGB = ImageSpec(mode="RGB", height=32, width=24)


@pytest.mark.parametrize(
    ("image", "shape", "dtype"),
    [(GRAY, (-1, 1, 28, 28), "float32"), (RGB, (-1, 3, 32, 24), "float16")],
)
def test_an_image_input_shaped_as_its_images_decode_is_accepted(
    image: ImageSpec, shape: tuple[int, ...], dtype: Any
) -> None:
    TensorSpec(name="image", shape=shape, dtype=dtype, image=image)


@pytest.mark.parametrize(
    ("image", "shape", "dtype", "match"),
    [
        (RGB, (-1, 1, 32, 24), "float32", "shape must be"),  # RGB decodes to 3 channels
        (GRAY, (-1, 28, 28), "float32", "shape must be"),  # channels first, always
        (GRAY, (-1, 1, 28, 27), "float32", "shape must be"),
        (GRAY, (-1, 1, 28, 28), "uint8", "scaled to floats"),
    ],
)
def test_an_image_input_its_images_could_never_fill_is_refused(
    image: ImageSpec, shape: tuple[int, ...], dtype: Any, match: str
) -> None:
    """Registered and served before: every image was then refused with a 422 blaming the
    client ("input 'image' has shape [1, 3, 28, 28]")."""
    with pytest.raises(ValidationError, match=match):
        TensorSpec(name="image", shape=shape, dtype=dtype, image=image)
