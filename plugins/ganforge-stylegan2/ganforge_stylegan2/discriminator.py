"""StyleGAN2's residual discriminator (Karras et al. 2020, config F's "resnet" critic).

fromRGB at the input resolution, then residual blocks that halve the resolution down to 4×4
(two 3×3 convolutions beside a 1×1 skip, summed and scaled by 1/√2), then the epilogue: the
minibatch standard deviation as an extra feature map, a 3×3 convolution, a dense layer (the
features) and the output. Conditional critics project the output onto a class embedding
(Miyato & Koyama 2018), as StyleGAN2-ADA does.
"""

from __future__ import annotations

import math

import torch
from ganforge.components import CriticOutput
from torch import nn

from ganforge_stylegan2.generator import channels_at, check_resolution
from ganforge_stylegan2.layers import EqualConv2d, EqualLinear, minibatch_stddev


class DiscriminatorBlock(nn.Module):
    """Two 3×3 convolutions (the second halving the resolution) beside a 1×1 skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activate=True)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activate=True, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2's residual critic with minibatch standard deviation.

    Returns a :class:`~ganforge.components.CriticOutput`: logits ``(B,)`` and the dense
    layer's features. ``mbstd_group`` samples share a standard deviation (fewer when the batch
    does not divide by it), over ``mbstd_channels`` slices of the features.
    """

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        channel_base: int = 16384,
        channel_max: int = 512,
        mbstd_group: int = 4,
        mbstd_channels: int = 1,
    ):
        super().__init__()
        resolutions = check_resolution(resolution)[::-1]  # from the input down to 4×4
        if min(channel_base, channel_max, mbstd_group, mbstd_channels) < 1:
            raise ValueError("channel_base, channel_max and the mbstd options must be >= 1")
        widths = [channels_at(r, channel_base, channel_max) for r in resolutions]
        last = widths[-1]
        if last % mbstd_channels:
            raise ValueError(f"mbstd_channels {mbstd_channels} must divide the {last} features")
        self.from_rgb = EqualConv2d(channels, widths[0], 1, activate=True)
        self.blocks = nn.Sequential(
            *(DiscriminatorBlock(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        )
        self.mbstd_group, self.mbstd_channels = mbstd_group, mbstd_channels
        self.conv = EqualConv2d(last + mbstd_channels, last, 3, activate=True)
        self.fc = EqualLinear(last * 4 * 4, last, activate=True)
        self.out = EqualLinear(last, last if num_classes else 1)
        self.embed = nn.Embedding(num_classes, last) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> CriticOutput:
        h = self.blocks(self.from_rgb(x))
        h = self.conv(minibatch_stddev(h, self.mbstd_group, self.mbstd_channels))
        features = self.fc(h.flatten(1))
        out = self.out(features)
        if self.embed is None:
            return CriticOutput(logits=out.squeeze(1), features=features)
        projected = (out * self.embed(y)).sum(dim=1) / math.sqrt(out.shape[1])
        return CriticOutput(logits=projected, features=features)
