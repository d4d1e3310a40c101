"""A U-Net generator that takes an image.

It upsamples its input (bilinearly) to the output's size and refines it with a small U-Net
(pix2pix's generator, without its dropout noise: it takes no latent). Its critic is
ganforge's built-in ``patch`` discriminator, conditioned on the same input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(cout, cout, 3, 1, 1),
        nn.LeakyReLU(0.2),
    )


class UNetGenerator(nn.Module):
    """``G(z, y, source)``: the input (``input_channels`` × ``input_resolution``²) to an
    image (``channels`` × ``resolution``²) in [-1, 1].

    ``width`` channels at full resolution, doubled at each of ``depth`` stride-2 levels;
    skip connections join each level's encoder and decoder. No noise (``latent_shape`` (0,))
    and no labels.
    """

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
    ):
        super().__init__()
        if num_classes:
            raise ValueError("the U-Net generator takes no labels")
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got {width} and {depth}")
        if resolution % 2**depth:
            raise ValueError(f"resolution {resolution} does not divide by 2^depth = {2**depth}")
        self.resolution = resolution
        widths = [width * 2**i for i in range(depth + 1)]
        self.stem = _block(input_channels, widths[0])
        self.down = nn.ModuleList(_block(widths[i], widths[i + 1], 2) for i in range(depth))
        self.up = nn.ModuleList(
            _block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], channels, 3, 1, 1)

    @property
    def last_layer(self) -> nn.Parameter:
        """The weight of the last layer (for ``[loss] adaptive_weight``)."""
        return self.head.weight

    def forward(self, z, y=None, source: torch.Tensor | None = None) -> torch.Tensor:
        if source is None:
            raise ValueError("the U-Net generator needs its input: G(z, y, source=...)")
        size = (self.resolution, self.resolution)
        h = self.stem(F.interpolate(source, size=size, mode="bilinear", align_corners=False))
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        for up in self.up:
            skip = skips.pop()
            h = up(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return torch.tanh(self.head(h))
