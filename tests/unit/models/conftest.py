from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from models.manifest import ModelManifest
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_CONFIG, TINY_SIGNATURE, write_tiny_mlp

Register = Callable[..., ModelManifest]


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture
def register(registry: ModelRegistry, tmp_path: Path) -> Register:
    """Register a tiny MLP version (weights from `seed`) under a name and version."""

    counter = iter(range(1_000_000))

    def _register(
        name: str = "tiny", version: str = "1.0.0", seed: int = 1, **kwargs: object
    ) -> ModelManifest:
        path = write_tiny_mlp(tmp_path / f"artefact-{next(counter)}.safetensors", seed=seed)
        options: dict[str, object] = {
            "format": "safetensors",
            "family": "mlp",
            "family_config": TINY_CONFIG,
            "signature": TINY_SIGNATURE,
        }
        options.update(kwargs)
        return registry.register(name, version, path, **options)  # type: ignore[arg-type]

    return _register
