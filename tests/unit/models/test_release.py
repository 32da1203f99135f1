"""Releasing a model frees its weights, even from a startup heap the server has frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.manifest import ModelManifest
from models.registry import ModelRegistry
from tests.support.models import register_mlp, register_slow


@pytest.fixture
def unfreeze_after() -> Iterator[None]:
    yield
    gc.unfreeze()


def register(registry: ModelRegistry, artefact_format: str, work: Path) -> ModelManifest:
    if artefact_format == "torch_export":  # a module in reference cycles
        return register_slow(registry, "1.0.0", work, seed=1, size=4)
    return register_mlp(registry, "1.0.0", work, seed=1)


@pytest.mark.usefixtures("unfreeze_after")
@pytest.mark.parametrize("artefact_format", ["safetensors", "torch_export"])
def test_a_released_model_leaves_no_weight_behind(tmp_path: Path, artefact_format: str) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    manifest = register(registry, artefact_format, tmp_path)
    assert manifest.format == artefact_format
    model = registry.load(manifest, "cpu")
    model.forward([torch.ones(1, 4)])
    gc.freeze()  # as the server does once its first version is ready (app.inference.host)
    weights = [weakref.ref(p) for p in model._module.parameters()]  # type: ignore[union-attr]
    assert weights

    model.release()
    gc.collect()

    assert [w() for w in weights] == [None] * len(weights)
    with pytest.raises(RuntimeError, match="was released"):
        model.forward([torch.ones(1, 4)])
