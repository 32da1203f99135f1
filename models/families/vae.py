"""A small variational autoencoder for 28x28 images, and its decoder served on its own.

Served deterministically: the encoder's mean is the latent (no sampling at inference), so the
same image always gives the same reconstruction. Parameter names are shared, so the decoder's
weights are the VAE's `decoder.*` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, pixels: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, latent)
        self.log_var = nn.Linear(hidden, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mean(h), self.log_var(h)


class Decoder(nn.Module):
    def __init__(self, pixels: int, hidden: int, latent: int, image_shape: tuple[int, ...]):
        super().__init__()
        self.image_shape = image_shape
        self.body = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels), nn.Sigmoid()
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(z)
        return out.reshape(z.shape[0], *self.image_shape)


class VAE(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], hidden: int, latent: int) -> None:
        super().__init__()
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.encoder = Encoder(pixels, hidden, latent)
        self.decoder = Decoder(pixels, hidden, latent, image_shape)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, _ = self.encoder(x)
        return self.decoder(mean), mean

    def sample_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training pass: reparameterised sample, reconstruction, mean and log-variance."""
        mean, log_var = self.encoder(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        return self.decoder(z), mean, log_var


class DecoderOnly(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], hidden: int, latent: int) -> None:
        super().__init__()
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.decoder = Decoder(pixels, hidden, latent, image_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(z)
        return out


def _shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    channels, height, width = image_shape  # JSON configs give a list
    return int(channels), int(height), int(width)


def build_vae(
    image_shape: Sequence[int] = (1, 28, 28), hidden: int = 256, latent: int = 16
) -> nn.Module:
    return VAE(_shape(image_shape), hidden, latent)


def build_decoder(
    image_shape: Sequence[int] = (1, 28, 28), hidden: int = 256, latent: int = 16
) -> nn.Module:
    return DecoderOnly(_shape(image_shape), hidden, latent)
