"""Versions of one small model, registered for real, to drive rollouts in end-to-end tests.

Every version serves TINY_SIGNATURE (x: 4 floats -> y: 3 floats), so a server following a stage
alias may switch between any two of them. Each carries a golden check computed from its own
outputs on a small input, so it passes registration and promotion like a user's model would:
- `register_mlp`: a healthy version (safetensors, mlp family); seeds give different weights;
- `register_guarded`: a torch.export program with a runtime assert on the input's magnitude:
  its golden check passes, yet it raises on any item with |x| >= its limit;
- `register_slow`: a torch.export program that burns a fixed amount of CPU per batch;
- `register_looping`: a torch.export program that loops as many times as its input's first
  value asks (a pass of minutes, inside torch, for a large one);
- `tamper`: flips one byte of a registered artefact, so its sha256 no longer matches.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import torch
from torch import nn

from models.manifest import GoldenCheck, ModelManifest
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_SIGNATURE, tiny_mlp, write_tiny_mlp
from tests.support.server import FRAMEWORM

MODEL = "tiny"
GOLDEN_INPUT = [[0.5, -0.25, 1.0, 0.0]]
CLI_TIMEOUT_S = 60.0


class _Guarded(nn.Module):
    """The tiny MLP, refusing at run time any input with an element of magnitude >= limit."""

    def __init__(self, seed: int, limit: float) -> None:
        super().__init__()
        self.mlp = tiny_mlp(seed)
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert_async(x.abs().max() < self.limit, "input magnitude out of range")
        out: torch.Tensor = self.mlp(x)
        return out


class _Looping(nn.Module):
    """The tiny MLP after a loop of max(x[:, 0]) iterations (torch's while_loop, in C++)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.mlp = tiny_mlp(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._higher_order_ops.while_loop import while_loop

        rounds = x[:, 0].max().clamp(max=1e9)
        zero = torch.zeros((), dtype=x.dtype)
        _, nothing = while_loop(  # type: ignore[no-untyped-call]
            lambda i, acc: i < rounds, lambda i, acc: (i + 1, acc * 0.0), (zero, zero)
        )
        out: torch.Tensor = self.mlp(x) + nothing
        return out


class _Slow(nn.Module):
    """The tiny MLP plus a size x size matrix product per batch whose result is multiplied by 0."""

    def __init__(self, seed: int, size: int) -> None:
        super().__init__()
        self.mlp = tiny_mlp(seed)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square = torch.ones(self.size, self.size, device=x.device)
        burn = (square @ square).mean() * 0.0
        out: torch.Tensor = self.mlp(x) + burn
        return out


def _golden(module: nn.Module) -> GoldenCheck:
    with torch.inference_mode():
        expected = module(torch.tensor(GOLDEN_INPUT)).tolist()
    return GoldenCheck(inputs={"x": GOLDEN_INPUT}, expected={"y": expected}, atol=1e-4)


def _export(module: nn.Module, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module.eval(), (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())
    return path


def register_mlp(registry: ModelRegistry, version: str, work: Path, seed: int) -> ModelManifest:
    """A healthy version: the tiny MLP with weights drawn from `seed`."""
    artefact = write_tiny_mlp(work / f"mlp-{version}.safetensors", seed)
    config = {"in_features": 4, "hidden": [8], "out_features": 3, "softmax": False}
    return registry.register(
        MODEL,
        version,
        artefact,
        format="safetensors",
        signature=TINY_SIGNATURE,
        family="mlp",
        family_config=config,
        golden=(_golden(tiny_mlp(seed)),),
        deterministic=True,
        actor="tests",
    )


def register_guarded(
    registry: ModelRegistry, version: str, work: Path, seed: int, limit: float = 10.0
) -> ModelManifest:
    """A version that passes its golden check but fails on items with |x| >= limit."""
    return _register_exported(
        registry, version, _Guarded(seed, limit), work / f"guarded-{version}.pt2"
    )


def register_slow(
    registry: ModelRegistry, version: str, work: Path, seed: int, size: int
) -> ModelManifest:
    """A version whose every batch costs a size x size matrix product, whatever its items."""
    return _register_exported(registry, version, _Slow(seed, size), work / f"slow-{version}.pt2")


def register_looping(registry: ModelRegistry, version: str, work: Path, seed: int) -> ModelManifest:
    """A version whose pass loops as many times as its input's first value asks."""
    return _register_exported(registry, version, _Looping(seed), work / f"looping-{version}.pt2")


def _register_exported(
    registry: ModelRegistry, version: str, module: nn.Module, path: Path
) -> ModelManifest:
    """Export `module` with a dynamic batch and register it, its own outputs as golden check."""
    return registry.register(
        MODEL,
        version,
        _export(module, path),
        format="torch_export",
        signature=TINY_SIGNATURE,
        golden=(_golden(module),),
        deterministic=True,
        actor="tests",
    )


def tamper(registry_dir: Path, manifest: ModelManifest) -> None:
    """Flip one byte in the middle of a registered artefact (its sha256 stops matching)."""
    artefact = registry_dir / manifest.name / manifest.version / manifest.artefact
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))


def promote(
    registry_dir: Path, version: str, *options: str, model: str = MODEL
) -> subprocess.CompletedProcess[str]:
    """`frameworm registry promote MODEL VERSION production`, as an operator would run it."""
    return subprocess.run(
        [FRAMEWORM, "registry", "promote", model, version, "production", *options],
        env={**os.environ, "FRAMEWORM_REGISTRY": str(registry_dir)},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
