"""What registration refuses in a signature and its weights, saying why in one line."""

from __future__ import annotations

import math
from importlib.resources import as_file
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from models.demo import demo_model
from models.errors import ArtefactError
from models.manifest import ImageSpec, ParameterSpec, TensorSpec, image_input_problem
from models.registry import ModelRegistry

GRAY = ImageSpec(mode="L", height=28, width=28)
RGB = ImageSpec(mode="RGB", height=32, width=24)


@pytest.mark.parametrize(
    ("image", "shape", "dtype"),
    [(GRAY, (-1, 1, 28, 28), "float32"), (RGB, (-1, 3, 32, 24), "float16")],
)
def test_an_image_input_shaped_as_its_images_decode_has_no_problem(
    image: ImageSpec, shape: tuple[int, ...], dtype: Any
) -> None:
    assert (
        image_input_problem(TensorSpec(name="image", shape=shape, dtype=dtype, image=image)) is None
    )


@pytest.mark.parametrize(
    ("image", "shape", "dtype", "problem"),
    [
        (RGB, (-1, 1, 32, 24), "float32", "shape must be [-1, 3, 32, 24]"),  # RGB: 3 channels
        (GRAY, (-1, 28, 28), "float32", "shape must be"),  # channels first, always
        (GRAY, (-1, 1, 28, 27), "float32", "shape must be"),
        (GRAY, (-1, 1, 28, 28), "uint8", "scaled to floats"),
    ],
)
def test_an_image_input_its_images_could_never_fill_is_named(
    image: ImageSpec, shape: tuple[int, ...], dtype: Any, problem: str
) -> None:
    # A stored manifest with such a spec still reads (its version keeps serving arrays)...
    spec = TensorSpec(name="image", shape=shape, dtype=dtype, image=image)
    assert problem in (image_input_problem(spec) or "")


def test_registering_a_version_whose_images_could_never_fill_its_input_is_refused(
    tmp_path: Path,
) -> None:
    """...but no new version is registered with one: it was, and then every image was refused
    with a 422 blaming the client ("input 'image' has shape [1, 3, 28, 28]")."""
    demo = demo_model("cnn-digits")
    (image,) = demo.signature.inputs
    assert image.image is not None
    rgb = image.model_copy(update={"image": image.image.model_copy(update={"mode": "RGB"})})
    signature = demo.signature.model_copy(update={"inputs": (rgb,)})
    registry = ModelRegistry(tmp_path)
    with as_file(demo.weights_resource()) as weights, pytest.raises(ArtefactError, match="RGB"):
        registry.register(
            "rgb-cnn",
            "1.0.0",
            weights,
            format="safetensors",
            signature=signature,
            family=demo.family,
            family_config=demo.family_config,
        )


def test_weights_that_do_not_fit_their_architecture_are_refused_saying_how(
    tmp_path: Path,
) -> None:
    """torch's first line is only "Error(s) in loading state_dict for CNN:": the reason (a
    size mismatch, missing keys) was cut off."""
    demo = demo_model("cnn-digits")
    registry = ModelRegistry(tmp_path)
    config = {**demo.family_config, "hidden": demo.family_config["hidden"] * 2}
    with (
        as_file(demo.weights_resource()) as weights,
        pytest.raises(ArtefactError, match="size mismatch for") as refused,
    ):
        registry.register(
            "cnn",
            "1.0.0",
            weights,
            format="safetensors",
            signature=demo.signature,
            family=demo.family,
            family_config=config,
        )
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 400


@pytest.mark.parametrize(
    ("bounds", "problem"),
    [
        ({"minimum": float("nan")}, "must not be NaN"),
        ({"maximum": float("nan")}, "must not be NaN"),
        ({"minimum": 2, "maximum": 1}, "minimum is above its maximum"),
    ],
)
def test_a_parameter_bound_the_request_check_could_not_apply_is_refused_in_the_manifest(
    bounds: dict[str, float], problem: str
) -> None:
    """Accepted before, such a bound made the request validator raise at the first request
    (a 500 on every request with that parameter's model)."""
    with pytest.raises(ValidationError, match=problem):
        ParameterSpec(type="float", **bounds)
    # As read from a stored manifest: Python's and pydantic's JSON both read NaN.
    members = [f'"{name}": {"NaN" if math.isnan(v) else v}' for name, v in bounds.items()]
    with pytest.raises(ValidationError, match=problem):
        ParameterSpec.model_validate_json('{"type": "float", ' + ", ".join(members) + "}")
    unbounded = ParameterSpec(type="float", minimum=float("-inf"), maximum=float("inf"))
    assert unbounded.maximum == float("inf")  # infinity means no limit that way
