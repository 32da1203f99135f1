"""The bundled demo models, and seeding a registry with them.

The weights and golden checks are committed under `weights/` (see `models/demo/README.md` for how
they were trained); they are read as package resources, so seeding works from an installed
distribution and never downloads anything.
"""

from __future__ import annotations

import copy
import json
from contextlib import suppress
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from typing import Any

from pydantic import TypeAdapter

from models.errors import ConflictError, ModelNotFoundError, VersionExistsError
from models.manifest import (
    GoldenCheck,
    ImageSpec,
    ModelManifest,
    ParameterSpec,
    Signature,
    TensorSpec,
)
from models.registry import ModelRegistry

_PACKAGE = "models.demo"
DEMO_VERSION = "1.0.0"
DATASET = "scikit-learn load_digits (UCI optical digits, 1797 8x8 images, grey levels 0-16)"

_IMAGE = ImageSpec(
    mode="L",
    height=28,
    width=28,
    formats=("PNG", "JPEG", "WEBP"),
    max_size_mb=10.0,
    max_pixels=4096 * 4096,
)
_DIGIT = TensorSpec(
    name="image",
    dtype="float32",
    shape=(-1, 1, 28, 28),
    image=_IMAGE,
    description="a 28x28 greyscale digit, white on black, pixel values in [0, 1]",
)
_VAE_CONFIG: dict[str, Any] = {"image_shape": [1, 28, 28], "hidden": 256, "latent": 16}
_GOLDEN_CHECKS = TypeAdapter(list[GoldenCheck])


@dataclass(frozen=True)
class DemoModel:
    """One bundled model: what to register, and the committed weights file it comes from."""

    name: str
    family: str
    family_config: dict[str, Any] = field(hash=False)
    signature: Signature = field(hash=False)
    weights: str
    description: str
    version: str = DEMO_VERSION

    @property
    def golden_file(self) -> str:
        return f"{self.name}.golden.json"

    def weights_resource(self) -> Traversable:
        return _weights_dir() / self.weights

    def golden(self) -> tuple[GoldenCheck, ...]:
        raw = (_weights_dir() / self.golden_file).read_bytes()
        return tuple(_GOLDEN_CHECKS.validate_json(raw))


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel(
        name="cnn-digits",
        family="cnn",
        family_config={
            "in_channels": 1,
            "height": 28,
            "width": 28,
            "channels": [16, 32, 64],
            "pool": [True, True, False],
            "hidden": 128,
            "classes": 10,
            "softmax": True,
        },
        signature=Signature(
            inputs=(_DIGIT,),
            outputs=(
                TensorSpec(
                    name="probabilities",
                    shape=(-1, 10),
                    description="class probabilities for the digits 0-9",
                ),
            ),
        ),
        weights="cnn-digits.safetensors",
        description="Handwritten digit classifier (small CNN) trained on scikit-learn's digits.",
    ),
    DemoModel(
        name="vae-digits",
        family="vae",
        family_config=_VAE_CONFIG,
        signature=Signature(
            inputs=(_DIGIT,),
            outputs=(
                TensorSpec(
                    name="reconstruction",
                    shape=(-1, 1, 28, 28),
                    description="the digit decoded from its latent mean",
                ),
                TensorSpec(name="latent", shape=(-1, 16), description="the encoder's mean"),
            ),
        ),
        weights="vae-digits.safetensors",
        description="Variational autoencoder of scikit-learn's digits: reconstruction and latent.",
    ),
    DemoModel(
        name="vae-digits-decoder",
        family="vae_decoder",
        family_config=copy.deepcopy(_VAE_CONFIG),
        signature=Signature(
            inputs=(
                TensorSpec(
                    name="latent",
                    shape=(-1, 16),
                    generate="standard_normal",
                    description="latent codes; drawn from N(0, 1) when the request omits them",
                ),
            ),
            outputs=(
                TensorSpec(
                    name="image",
                    shape=(-1, 1, 28, 28),
                    description="generated digits, pixel values in [0, 1]",
                ),
            ),
            parameters={
                "batch_size": ParameterSpec(
                    type="int",
                    minimum=1,
                    maximum=128,
                    default=1,
                    description="how many digits to generate when latents are drawn",
                ),
                "seed": ParameterSpec(
                    type="int",
                    minimum=0,
                    maximum=2**31 - 1,
                    description="seed for the drawn latents (same seed, same digits)",
                ),
            },
        ),
        weights="vae-digits-decoder.safetensors",
        description="The decoder of vae-digits on its own: generates digits from latent codes.",
    ),
)


def demo_model(name: str) -> DemoModel:
    for demo in DEMO_MODELS:
        if demo.name == name:
            return demo
    raise KeyError(name)


def sample_png(label: int) -> bytes:
    """A held-out digit `label` as a 28x28 greyscale PNG, one the demo CNN classifies correctly."""
    if label not in range(10):
        raise ValueError(f"no sample digit {label!r}; samples are 0-9")
    return (files(_PACKAGE) / "samples" / f"digit-{label}.png").read_bytes()


def demo_metrics() -> dict[str, Any]:
    """The committed training record: data set, split, seed and held-out metrics per model."""
    metrics: dict[str, Any] = json.loads((_weights_dir() / "metrics.json").read_bytes())
    return metrics


def seed_demo(registry: ModelRegistry, *, actor: str = "seed-demo") -> list[ModelManifest]:
    """Register every demo model not yet registered, and put each in production if none is.

    Idempotent, and safe beside a concurrent seeder: a version someone else registered first is
    skipped, and so is a promotion that loses its compare-and-swap. Returns the manifests this
    call registered (empty when everything was already there).
    """
    metrics = demo_metrics()
    registered = []
    for demo in DEMO_MODELS:
        if demo.version not in _versions(registry, demo.name):
            # A concurrent seeder may get there first; its artefact is the same.
            with suppress(VersionExistsError):
                registered.append(_register(registry, demo, metrics, actor))
        index = registry.index(demo.name)
        if index.aliases.get("production") is None:
            # Losing the compare-and-swap means someone moved the stages meanwhile: theirs stands.
            with suppress(ConflictError):
                registry.promote(
                    demo.name,
                    demo.version,
                    "production",
                    actor=actor,
                    reason="bundled demo model",
                    expected_revision=index.revision,
                )
    return registered


def _register(
    registry: ModelRegistry, demo: DemoModel, metrics: dict[str, Any], actor: str
) -> ModelManifest:
    metadata = {
        "source": "frameworm bundled demo",
        "dataset": metrics["dataset"],
        "split": metrics["split"],
        "seed": metrics["seed"],
        "held_out": metrics["models"][demo.name],
        "torch_version": metrics["torch_version"],
    }
    with as_file(demo.weights_resource()) as weights:
        return registry.register(
            demo.name,
            demo.version,
            weights,
            format="safetensors",
            signature=demo.signature,
            family=demo.family,
            family_config=copy.deepcopy(demo.family_config),
            golden=demo.golden(),
            deterministic=True,
            description=demo.description,
            metadata=metadata,
            actor=actor,
        )


def _versions(registry: ModelRegistry, name: str) -> list[str]:
    try:
        return registry.index(name).versions
    except ModelNotFoundError:
        return []


def _weights_dir() -> Traversable:
    return files(_PACKAGE) / "weights"
