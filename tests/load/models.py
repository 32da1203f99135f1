"""The two benchmark models of shared/BENCHMARK.md, built, saved and registered like user models.

Both take a flattened 1x28x28 image (784 float32 values, input `x`) and return 10 float32
values (output `y`). Weights come from `torch.manual_seed(0)` and PyTorch's default
initialisation; the configs are written out in full so that a change to a family's defaults
cannot silently change what the benchmark measures.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from models.families import build_model
from models.manifest import GoldenCheck, Signature, TensorSpec
from models.registry import ModelRegistry

VERSION = "1.0.0"
SEED = 0
SIGNATURE = Signature(
    inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, 784)),),
    outputs=(TensorSpec(name="y", dtype="float32", shape=(-1, 10)),),
)


@dataclass(frozen=True)
class BenchModel:
    """One benchmark model: the registry name, its family and full family config."""

    key: str
    name: str
    family: str
    config: dict[str, Any] = field(hash=False)


BENCH_MODELS: dict[str, BenchModel] = {
    "mlp": BenchModel(
        key="mlp",
        name="bench-mlp",
        family="mlp",
        config={"in_features": 784, "hidden": [512, 512], "out_features": 10, "softmax": False},
    ),
    "cnn": BenchModel(
        key="cnn",
        name="bench-cnn",
        family="cnn",
        config={
            "in_channels": 1,
            "height": 28,
            "width": 28,
            "channels": [32, 64, 128],
            "pool": [True, True, False],
            "hidden": 2048,
            "classes": 10,
            "softmax": False,
        },
    ),
}


def build(key: str) -> nn.Module:
    """The benchmark model `key` ("mlp" or "cnn") with its seeded weights, in eval mode."""
    spec = BENCH_MODELS[key]
    torch.manual_seed(SEED)
    return build_model(spec.family, dict(spec.config)).eval()


def digit_input() -> np.ndarray:
    """A real digit (the demo sample "3"), as a (1, 784) float32 array in [0, 1]."""
    from PIL import Image

    from models.demo import sample_png

    with Image.open(io.BytesIO(sample_png(3))) as image:
        pixels = np.asarray(image.convert("L").resize((28, 28)), dtype=np.float32) / 255.0
    return pixels.reshape(1, 784)


def reference_output(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's answer run in this process (eval, inference mode)."""
    with torch.inference_mode():
        out: np.ndarray = module(torch.from_numpy(x)).numpy()
    return out


def weights_path(registry_dir: Path, key: str) -> Path:
    """Where the registered artefact of `key` lives in a local registry."""
    spec = BENCH_MODELS[key]
    return registry_dir / spec.name / VERSION / "model.safetensors"


def register_benchmark_models(registry_dir: Path) -> list[str]:
    """Register both models (version 1.0.0, production) unless present; names registered."""
    registry = ModelRegistry(registry_dir)
    present = set(registry.list_models())
    x = digit_input()
    done = []
    for key, spec in BENCH_MODELS.items():
        if spec.name in present:
            continue
        module = build(key)
        golden = GoldenCheck(
            name="digit-3",
            inputs={"x": x.tolist()},
            expected={"y": reference_output(module, x).tolist()},
            atol=1e-4,
            rtol=1e-4,
        )
        with tempfile.TemporaryDirectory() as tmp:
            artefact = Path(tmp) / "model.safetensors"
            state = {k: v.contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(artefact))
            registry.register(
                spec.name,
                VERSION,
                artefact,
                format="safetensors",
                signature=SIGNATURE,
                family=spec.family,
                family_config=dict(spec.config),
                golden=(golden,),
                deterministic=True,
                description=f"benchmark {key.upper()} (shared/BENCHMARK.md), seed {SEED}",
                actor="frameworm-bench",
            )
        registry.promote(spec.name, VERSION, "production", actor="frameworm-bench")
        done.append(spec.name)
    return done
