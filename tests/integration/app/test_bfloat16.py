"""A bfloat16 model: its inputs travel as float32 (numpy has no bfloat16) and are cast for it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

from models.manifest import ParameterSpec, Signature, TensorSpec
from models.registry import ModelRegistry
from models.tensors import generate
from tests.integration.app.apps import app_settings, running_app

NAME = "half-brain"


class Scale(nn.Module):
    """y = 2x + 0.5 in bfloat16; it refuses float32, as bfloat16 weights would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16:
            raise TypeError(f"expected bfloat16, got {x.dtype}")
        return x * 2 + 0.5


def register_scale(work: Path, signature: Signature) -> Path:
    """The bfloat16 Scale model under NAME, in production, in a registry under `work`."""
    example = (torch.zeros(2, 3, dtype=torch.bfloat16),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(Scale().eval(), example, dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    artefact = work / "scale.pt2"
    artefact.write_bytes(buffer.getvalue())
    registry = ModelRegistry(work / "registry")
    registry.register(NAME, "1.0.0", artefact, format="torch_export", signature=signature)
    registry.promote(NAME, "1.0.0", "production")
    return work / "registry"


SPEC = {"dtype": "bfloat16", "shape": (-1, 3)}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    signature = Signature(
        inputs=(TensorSpec(name="x", **SPEC),), outputs=(TensorSpec(name="y", **SPEC),)
    )
    return register_scale(tmp_path_factory.mktemp("bf16"), signature)


def test_a_bfloat16_model_warms_up_and_serves_both_protocols(registry: Path) -> None:
    with running_app(app_settings(registry, model=NAME)) as client:  # ready: warmed up
        plain = client.post("/infer", json={"inputs": {"x": [[1.0, 2.0, -3.0]]}})
        tensor = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 4]}
        v2 = client.post(f"/v2/models/{NAME}/infer", json={"inputs": [tensor]})
    assert plain.status_code == 200, plain.text
    assert plain.json()["outputs"]["y"] == [[2.5, 4.5, -5.5]]
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert (output["datatype"], output["data"]) == ("FP32", [2.5, 4.5, 8.5])


def test_a_bfloat16_input_drawn_by_the_server_is_served(tmp_path: Path) -> None:
    """A generated input (as vae-digits-decoder's latent) is drawn, then cast for the model."""
    signature = Signature(
        inputs=(TensorSpec(name="x", generate="standard_normal", **SPEC),),
        outputs=(TensorSpec(name="y", **SPEC),),
        parameters={
            "batch_size": ParameterSpec(type="int", minimum=1, maximum=8, default=1),
            "seed": ParameterSpec(type="int", minimum=0),
        },
    )
    registry = register_scale(tmp_path, signature)
    drawn = generate(signature.inputs[0], 2, seed=7)
    with running_app(app_settings(registry, model=NAME)) as client:
        answer = client.post(
            "/infer", json={"inputs": {}, "parameters": {"batch_size": 2, "seed": 7}}
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"]["y"] == (drawn * 2 + 0.5).float().tolist()
