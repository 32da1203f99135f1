"""A .pt2 exported with a capped batch dimension: the program refuses larger batches."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.support.artefacts import tiny_mlp


def write_capped_mlp(path: Path, max_batch: int) -> torch.nn.Module:
    """The tiny MLP exported with `Dim("batch", max=max_batch)`; returns the eager module."""
    module = tiny_mlp(seed=2)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    program = torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return module
