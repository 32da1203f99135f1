"""Tensors for a signature: dtype names, generated inputs, and example inputs."""

from __future__ import annotations

import numpy as np
import torch

from models.manifest import Dtype, Signature, TensorSpec

TORCH_DTYPES: dict[Dtype, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
# numpy has no bfloat16: such tensors travel as float32 on the wire and are cast on the device.
NUMPY_DTYPES: dict[Dtype, np.dtype[np.generic]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
FLOAT_DTYPES: frozenset[Dtype] = frozenset({"float32", "float16", "bfloat16", "float64"})


def generate(spec: TensorSpec, batch_size: int, seed: int | None) -> torch.Tensor:
    """Draw a generated input (e.g. a VAE decoder's latents) reproducibly from a seed."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    shape = (batch_size, *spec.shape[1:])
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(TORCH_DTYPES[spec.dtype])


def example_inputs(signature: Signature, batch_size: int) -> list[torch.Tensor]:
    """Zero inputs of the signature's shapes, for warm-up and shape checks."""
    return [
        torch.zeros((batch_size, *spec.shape[1:]), dtype=TORCH_DTYPES[spec.dtype])
        for spec in signature.inputs
    ]


def from_value(value: object, spec: TensorSpec) -> torch.Tensor:
    """A nested list (as stored in golden checks) as a tensor of the spec's dtype."""
    array = np.asarray(value, dtype=NUMPY_DTYPES[spec.dtype])
    return torch.from_numpy(array).to(TORCH_DTYPES[spec.dtype])
