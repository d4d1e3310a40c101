"""A U-Net generator that takes an image and a patch critic that may be conditioned on it.

The generator upsamples its input (bilinearly) to the output's size and refines it with a
small U-Net (pix2pix's generator, without its dropout noise: it takes no latent). The critic
scores overlapping patches (pix2pix's PatchGAN) of the output, concatenated with the input
upsampled to the same size when ``conditioned`` (the pix2pix critic), with spectral
normalisation on every layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


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


class PatchCritic(nn.Module):
    """``D(x, y, source)``: a logit per overlapping patch of ``x``, B×1×h×w.

    ``layers`` stride-2 4×4 convolutions (``width`` channels, doubled each) and a 3×3 one to a
    logit. ``conditioned`` (and an ``[input]`` in the recipe): the input, upsampled to
    ``x``'s size, is concatenated with ``x`` (pix2pix's conditional critic).
    """

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int,
        input_channels: int = 0,
        input_resolution: int = 0,
        width: int = 64,
        layers: int = 2,
        conditioned: bool = True,
    ):
        super().__init__()
        if num_classes:
            raise ValueError("the patch critic takes no labels")
        if width < 1 or layers < 1:
            raise ValueError(f"width and layers must be >= 1, got {width} and {layers}")
        self.takes_input = bool(conditioned and input_channels)
        cin = channels + (input_channels if self.takes_input else 0)
        body: list[nn.Module] = []
        for i in range(layers):
            cout = width * 2**i
            body += [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2)]
            cin = cout
        body.append(spectral_norm(nn.Conv2d(cin, 1, 3, 1, 1)))
        self.body = nn.Sequential(*body)

    def forward(self, x, y=None, source: torch.Tensor | None = None) -> torch.Tensor:
        if self.takes_input:
            upsampled = F.interpolate(source.to(x.dtype), size=x.shape[-2:], mode="nearest")
            x = torch.cat([x, upsampled], 1)
        return self.body(x)
