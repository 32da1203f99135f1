"""A torch.export model of two inputs sharing the batch dimension, registered and served."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.manifest import Signature, TensorSpec
from models.registry import ModelRegistry
from tests.integration.app.apps import app_settings, running_app


class Scaled(nn.Module):
    def forward(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor]:
        return (x * w,)


def test_inputs_sharing_the_batch_dimension_register_and_are_served(tmp_path: Path) -> None:
    """torch.export writes a guard tying the two inputs' batch sizes (`guards_code`), and any
    guard was refused: no model whose inputs meet (`x * w`, a concatenation) could register."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.ones(2, 4), torch.ones(2, 4))
    program = torch.export.export(Scaled(), example, dynamic_shapes=({0: batch}, {0: batch}))
    path = tmp_path / "scaled.pt2"
    torch.export.save(program, path)
    x_spec, w_spec, y_spec = (TensorSpec(name=n, dtype="float32", shape=(-1, 4)) for n in "xwy")
    signature = Signature(inputs=(x_spec, w_spec), outputs=(y_spec,))
    registry = ModelRegistry(tmp_path / "registry")
    registry.register("scaled", "1.0.0", path, format="torch_export", signature=signature)
    registry.promote("scaled", "1.0.0", "production", actor="tests")
    x, w = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], [[2.0] * 4, [0.5] * 4]
    with running_app(app_settings(tmp_path / "registry", model="scaled")) as client:
        served = client.post("/infer", json={"inputs": {"x": x, "w": w}})
        mismatched = client.post("/infer", json={"inputs": {"x": x, "w": w[:1]}})
    assert served.status_code == 200, served.text
    assert served.json()["outputs"]["y"] == [[2.0, 4.0, 6.0, 8.0], [2.5, 3.0, 3.5, 4.0]]
    assert mismatched.status_code == 422, mismatched.text  # the server's own check, first
