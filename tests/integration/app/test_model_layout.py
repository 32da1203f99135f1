"""On the CPU a convolutional model is served channels-last unless the setting turns it off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.manifest import Signature, TensorSpec
from models.registry import ModelRegistry
from tests.integration.app.apps import app_settings, running_app


@pytest.mark.parametrize("enabled", [True, False])
def test_the_demo_cnn_is_served_channels_last_on_the_cpu(
    seeded_registry: Path, enabled: bool
) -> None:
    settings = app_settings(seeded_registry, device="cpu", cpu_channels_last=enabled)
    with running_app(settings) as client:  # ready: loaded, warm, golden checks passed
        runner = client.state["host"].runner
        weights = [p for p in runner.model._module.parameters() if p.dim() == 4]

    assert weights
    # The last convolution has several input channels, so the two layouts differ for it.
    assert weights[-1].is_contiguous(memory_format=torch.channels_last) is enabled
    assert weights[-1].is_contiguous() is not enabled


class ImageToImage(torch.nn.Module):
    """A convolution answering an image (a denoiser's shape): channels-last in, NHWC out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


@pytest.fixture(scope="module")
def image_model_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("image-to-image")
    artefact = work / "model.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        ImageToImage().eval(), (torch.zeros(2, 3, 4, 4),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(artefact))
    registry = ModelRegistry(work / "registry")
    signature = Signature(
        inputs=(TensorSpec(name="x", shape=(-1, 3, 4, 4)),),
        outputs=(TensorSpec(name="y", shape=(-1, 3, 4, 4)),),
    )
    registry.register(
        "denoise", "1.0.0", artefact, format="torch_export", signature=signature, deterministic=True
    )
    registry.promote("denoise", "1.0.0", "production")
    return work / "registry"


@pytest.mark.parametrize("enabled", [True, False])
def test_a_multichannel_image_output_is_answered_in_either_layout(
    image_model_registry: Path, enabled: bool
) -> None:
    x = torch.arange(48, dtype=torch.float32).reshape(1, 3, 4, 4) / 10
    with torch.inference_mode():
        expected = ImageToImage().eval()(x)
    settings = app_settings(
        image_model_registry,
        model="denoise",
        device="cpu",
        cpu_channels_last=enabled,
        result_cache="memory",
    )
    with running_app(settings) as client:
        answers = [client.post("/infer", json={"inputs": {"x": x.tolist()}}) for _ in range(2)]

    for answer in answers:  # the second from the result cache, which keeps the first's arrays
        assert answer.status_code == 200, answer.text
        assert torch.allclose(torch.tensor(answer.json()["outputs"]["y"]), expected, atol=1e-5)
