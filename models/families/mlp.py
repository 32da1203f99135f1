"""A multilayer perceptron over a flat input (the benchmark MLP: 784 -> 512 -> 512 -> 10)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], out_features: int, softmax: bool):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(x.flatten(1))
        return logits.softmax(dim=1) if self.softmax else logits


def build(
    in_features: int = 784,
    hidden: list[int] | None = None,
    out_features: int = 10,
    softmax: bool = False,
) -> nn.Module:
    return MLP(in_features, [512, 512] if hidden is None else hidden, out_features, softmax)
