"""StyleGAN2's generator (Karras et al. 2020, config F's "skip" architecture).

A mapping network turns z into an intermediate latent w; the synthesis network starts from a
learned 4×4 constant and, at every resolution up to the output, applies modulated convolutions
styled by w, adds per-pixel noise, and sends a modulated 1×1 "toRGB" output that is upsampled
and summed with the earlier ones (skip connections, no progressive growing).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ganforge_stylegan2.layers import (
    EqualLinear,
    leaky_relu,
    modulated_conv2d,
    normalize_2nd_moment,
)


def check_resolution(resolution: int) -> list[int]:
    """The resolutions of the blocks, 4, 8, … up to ``resolution`` (a power of two ≥ 8)."""
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"StyleGAN2 needs a power-of-two resolution >= 8, not {resolution}")
    return [2**i for i in range(2, int(math.log2(resolution)) + 1)]


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: ``min(channel_base / resolution, channel_max)``."""
    return max(1, min(channel_base // resolution, channel_max))


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class MappingNetwork(nn.Module):
    """z (and a class embedding) → w through an MLP with a 0.01 learning-rate multiplier.

    In training mode it tracks ``w_avg``, a moving average of w (a buffer, so checkpoints and
    exports keep it): the centre that truncation pulls samples towards.
    """

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_layers: int,
        num_classes: int,
        lr_mul: float,
        w_avg_beta: float,
    ):
        super().__init__()
        self.embed = nn.Embedding(num_classes, w_dim) if num_classes else None
        features = [z_dim + (w_dim if num_classes else 0)] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *(EqualLinear(a, b, lr_mul=lr_mul, activate=True) for a, b in pairwise(features))
        )
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.embed is not None:
            x = torch.cat([x, normalize_2nd_moment(self.embed(y))], dim=1)
        w = self.layers(x)
        if self.training:  # not while sampling: sampling changes no state
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return w


class SynthesisLayer(nn.Module):
    """(2× upsampling,) a modulated, demodulated 3×3 convolution, noise, bias, leaky ReLU.

    Noise is fresh Gaussian noise (from the device's global RNG, which checkpoints save) in
    training mode and a fixed map (a buffer) in eval mode, so samples and exports are
    deterministic and draw nothing from any RNG. Its strength is learned, starting at 0.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = upsample(x)
        x = modulated_conv2d(x, self.weight, self.affine(w), demodulate=True, padding=1)
        if self.training:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const
        return leaky_relu(x + noise * self.noise_strength + self.bias.view(1, -1, 1, 1))


class ToRGB(nn.Module):
    """A modulated 1×1 convolution to the output channels, without demodulation."""

    def __init__(self, in_channels: int, channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, demodulate=False) + self.bias.view(
            1, -1, 1, 1
        )


class SynthesisBlock(nn.Module):
    """One resolution: (the 4×4 constant, or an upsampling layer,) a layer, and toRGB.

    Consumes ``num_ws`` latents, one per layer and one for toRGB.
    """

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, resolution: int, channels: int
    ):
        super().__init__()
        self.first = in_channels == 0
        if self.first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, up=False)
        self.torgb = ToRGB(out_channels, channels, w_dim)
        self.num_ws = 2 if self.first else 3

    def forward(
        self, x: torch.Tensor | None, image: torch.Tensor | None, ws: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ws_iter = iter(ws.unbind(dim=1))
        if self.first:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, next(ws_iter))
        x = self.conv1(x, next(ws_iter))
        rgb = self.torgb(x, next(ws_iter))
        return x, rgb if image is None else upsample(image) + rgb


class StyleGAN2Generator(nn.Module):
    """StyleGAN2's generator: mapping network, modulated convolutions, noise, skip outputs.

    Called as ``G(z, y=None, truncation=None, return_ws=False)``. ``truncation`` ψ pulls w
    towards the tracked average, ``w_avg + ψ·(w − w_avg)``: ψ = 1 changes nothing, ψ = 0 gives
    the average image for every z. ``return_ws=True`` also returns the per-layer latents
    (B×num_ws×w_dim) the images were made from, for path-length regularization. The output is
    linear in training, as in the paper, and clamped to [-1, 1] in eval mode (samples, export).
    Widths follow ``min(channel_base / resolution, channel_max)``.
    """

    latent_prior = "normal"
    supports_truncation = True

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        channel_base: int = 16384,
        channel_max: int = 512,
        mapping_lr: float = 0.01,
        w_avg_beta: float = 0.995,
    ):
        super().__init__()
        resolutions = check_resolution(resolution)
        if min(z_dim, w_dim, mapping_layers, channel_base, channel_max) < 1:
            raise ValueError("z_dim, w_dim, mapping_layers, channel_base, channel_max must be >= 1")
        if not 0 < mapping_lr <= 1 or not 0 <= w_avg_beta < 1:
            raise ValueError("mapping_lr must be in (0, 1] and w_avg_beta in [0, 1)")
        self.latent_shape, self.w_dim, self.num_classes = (z_dim,), w_dim, num_classes
        self.mapping = MappingNetwork(
            z_dim, w_dim, mapping_layers, num_classes, mapping_lr, w_avg_beta
        )
        widths = [0] + [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.blocks = nn.ModuleList(
            SynthesisBlock(widths[i], widths[i + 1], w_dim, r, channels)
            for i, r in enumerate(resolutions)
        )
        self.num_ws = sum(block.num_ws for block in self.blocks)

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        """Images from per-layer latents ``ws`` (B×num_ws×w_dim)."""
        x = image = None
        for block in self.blocks:
            x, image = block(x, image, ws[:, : block.num_ws])
            ws = ws[:, block.num_ws :]
        return image if self.training else image.clamp(-1, 1)

    def forward(
        self,
        z: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        truncation: float | None = None,
        return_ws: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        # W in float32 even under autocast: the latents a caller differentiates by (path
        # length) must be the very tensor returned, which mixed precision would otherwise copy.
        w = self.mapping(z, y if self.num_classes else None).float()
        if truncation is not None:
            w = self.mapping.w_avg.lerp(w, truncation)
        # One w per layer: the same for all of them (StyleGAN2's path-length regularizer
        # averages its gradient over these copies).
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        images = self.synthesis(ws)
        return (images, ws) if return_ws else images
