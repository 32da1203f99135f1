"""A convolutional classifier over one image (the benchmark CNN and the digits demo).

Each conv stage is Conv 3x3 (pad 1) + ReLU, optionally followed by MaxPool 2; then one hidden
Linear + ReLU and the class layer. Inputs may be flat (784 values) or (C, H, W).
"""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        channels: list[int],
        pool: list[bool],
        hidden: int,
        classes: int,
        softmax: bool,
    ) -> None:
        super().__init__()
        if len(channels) != len(pool):
            raise TypeError("channels and pool need one entry per conv stage")
        self.input_shape = (in_channels, height, width)
        stages: list[nn.Module] = []
        depth = in_channels
        for out, pooled in zip(channels, pool, strict=True):
            stages += [nn.Conv2d(depth, out, kernel_size=3, padding=1), nn.ReLU()]
            if pooled:
                stages.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            depth = out
        self.features = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(depth * height * width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_shape)
        logits: torch.Tensor = self.head(self.features(x))
        return logits.softmax(dim=1) if self.softmax else logits


def build(
    in_channels: int = 1,
    height: int = 28,
    width: int = 28,
    channels: list[int] | None = None,
    pool: list[bool] | None = None,
    hidden: int = 2048,
    classes: int = 10,
    softmax: bool = False,
) -> nn.Module:
    return CNN(
        in_channels,
        height,
        width,
        [32, 64, 128] if channels is None else channels,
        [True, True, False] if pool is None else pool,
        hidden,
        classes,
        softmax,
    )
