"""Small real artefacts for tests: a seeded MLP as safetensors, and the signature it serves."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from models.families import build_model
from models.manifest import Signature, TensorSpec

TINY_CONFIG = {"in_features": 4, "hidden": [8], "out_features": 3, "softmax": False}
TINY_SIGNATURE = Signature(
    inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, 4)),),
    outputs=(TensorSpec(name="y", dtype="float32", shape=(-1, 3)),),
)


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", TINY_CONFIG).eval()


def write_tiny_mlp(path: Path, seed: int = 0) -> Path:
    """Weights of a 4 -> 8 -> 3 MLP; different seeds give different weights (versions)."""
    module = tiny_mlp(seed)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path
