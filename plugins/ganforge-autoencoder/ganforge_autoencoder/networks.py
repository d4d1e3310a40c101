"""A convolutional autoencoder as a generator: the image in, its reconstruction out.

The encoder halves the resolution ``depth`` times to a bottleneck of ``code_channels``
channels (28×28 grey at depth 2 and 4 channels: 196 numbers for 784 pixels); the decoder
mirrors it with nearest-neighbour upsampling. Group normalisation and SiLU, as in the VQGAN
autoencoders, without the quantiser. It takes no noise (``latent_shape`` (0,)) and names its
last layer for the adaptive weight.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(groups, cout), nn.SiLU())


class Autoencoder(nn.Module):
    """``G(z, y, source)``: the reconstruction of ``source`` (the image itself: ``[input]
    name = "identity"``), images in [-1, 1]."""

    latent_shape = (0,)
    latent_prior = "normal"

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int,
        input_channels: int,
        input_resolution: int,
        width: int = 32,
        depth: int = 2,
        code_channels: int = 4,
    ):
        super().__init__()
        if num_classes:
            raise ValueError("the autoencoder takes no labels")
        if input_resolution != resolution or input_channels != channels:
            raise ValueError(
                'the autoencoder reconstructs its input: use [input] name = "identity"'
            )
        if width < 1 or depth < 1 or code_channels < 1:
            raise ValueError("width, depth and code_channels must be >= 1")
        if resolution % 2**depth:
            raise ValueError(f"resolution {resolution} does not divide by 2^depth = {2**depth}")
        widths = [width * 2**i for i in range(depth + 1)]
        encoder: list[nn.Module] = [_block(channels, widths[0])]
        for i in range(depth):
            encoder += [
                nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1),
                _block(widths[i + 1], widths[i + 1]),
            ]
        encoder.append(nn.Conv2d(widths[-1], code_channels, 1))
        decoder: list[nn.Module] = [_block(code_channels, widths[-1])]
        for i in reversed(range(depth)):
            decoder += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                _block(widths[i + 1], widths[i]),
            ]
        self.encoder, self.decoder = nn.Sequential(*encoder), nn.Sequential(*decoder)
        self.head = nn.Conv2d(widths[0], channels, 3, 1, 1)

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight of the decoder's last layer (for ``[loss] adaptive_weight``)."""
        return self.head.weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.decoder(code)))

    def forward(self, z, y=None, source: torch.Tensor | None = None) -> torch.Tensor:
        if source is None:
            raise ValueError("the autoencoder needs its input: G(z, y, source=...)")
        return self.decode(self.encode(source))
