"""LoadedModel.use_channels_last: NHWC convolution weights on the CPU, only where outputs stay."""

from __future__ import annotations

import torch
from torch import nn

from models.families import build_model
from models.formats import LoadedModel
from models.manifest import ModelManifest, Signature, TensorSpec
from tests.support.artefacts import TINY_SIGNATURE, tiny_mlp

IMAGE_SIGNATURE = Signature(
    inputs=(TensorSpec(name="x", dtype="float32", shape=(-1, 64)),),
    outputs=(TensorSpec(name="y", dtype="float32", shape=(-1, 10)),),
)
CNN_CONFIG = {
    "in_channels": 1,
    "height": 8,
    "width": 8,
    "channels": [4, 8],
    "pool": [True, False],
    "hidden": 16,
    "classes": 10,
    "softmax": False,
}


def loaded(module: nn.Module, signature: Signature) -> LoadedModel:
    manifest = ModelManifest(
        name="m",
        version="1.0.0",
        format="torch_export",
        artefact="model.pt2",
        sha256="0" * 64,
        size_bytes=0,
        signature=signature,
    )
    return LoadedModel(manifest, module.eval(), torch.device("cpu"))


def conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", CNN_CONFIG)


class FlattensWithView(nn.Module):
    """Calls .view() on a convolution's output: fine in NCHW, an error in NHWC."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv2(self.conv1(x.view(-1, 1, 8, 8)))
        return self.head(features.view(features.size(0), -1))  # type: ignore[no-any-return]


def test_a_cnn_runs_channels_last_and_computes_what_it_did() -> None:
    x = torch.rand(5, 64)
    with torch.inference_mode():
        expected = cnn()(x)
    model = loaded(cnn(), IMAGE_SIGNATURE)

    assert model.use_channels_last() is True

    weights = conv_weights(model._module)  # type: ignore[arg-type]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not weights[-1].is_contiguous()  # 8 x 4 x 3 x 3: the layouts differ
    [y] = model.forward([x])
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


def test_a_model_that_needs_nchw_strides_is_put_back_as_it_was() -> None:
    torch.manual_seed(0)
    module = FlattensWithView()
    x = torch.rand(3, 64)
    with torch.inference_mode():
        expected = module(x)
    model = loaded(module, IMAGE_SIGNATURE)

    assert model.use_channels_last() is False

    assert module.conv2.weight.is_contiguous()  # NCHW again
    [y] = model.forward([x])
    torch.testing.assert_close(y, expected)


def test_a_model_without_convolutions_is_left_alone() -> None:
    module = tiny_mlp(seed=1)
    model = loaded(module, TINY_SIGNATURE)

    assert model.use_channels_last() is False
    assert all(p.is_contiguous() for p in module.parameters())
