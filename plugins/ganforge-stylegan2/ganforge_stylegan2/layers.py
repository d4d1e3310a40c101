"""The building blocks of StyleGAN2 (Karras et al. 2020), in plain PyTorch.

Equalized learning rate: weights are stored at unit scale and multiplied by ``1/√fan_in`` (times
a learning-rate multiplier) at every call, so Adam's per-parameter step sizes treat every layer
alike. The modulated convolution scales each input channel by a per-sample style and, with
demodulation, rescales each output channel so that unit-variance inputs give unit-variance
outputs; it replaces StyleGAN's AdaIN without its droplet artefacts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Leaky ReLU with this gain keeps unit variance through a layer.
ACTIVATION_GAIN = math.sqrt(2)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * ACTIVATION_GAIN


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each row divided by its root mean square (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """A linear layer with equalized learning rate, an initial bias and an optional activation.

    ``lr_mul`` slows the layer down (the mapping network uses 0.01): weights are stored as
    ``N(0, 1) / lr_mul`` and scaled by ``lr_mul / √in_features`` at run time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activate: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul))
        self.weight_gain, self.bias_gain = lr_mul / math.sqrt(in_features), lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return leaky_relu(x) if self.activate else x


class EqualConv2d(nn.Module):
    """A same-padded convolution with equalized learning rate; ``down`` halves the resolution
    (2×2 average pooling after the convolution, an anti-aliased stride of 2)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        activate: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding, self.activate, self.down = kernel_size // 2, activate, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, padding=self.padding)
        if self.down:
            x = F.avg_pool2d(x, 2)
        if self.bias is not None:
            x = x + self.bias.view(1, -1, 1, 1)
        return leaky_relu(x) if self.activate else x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    padding: int = 0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """StyleGAN2's modulated convolution of ``x`` (B×I×H×W) with ``weight`` (O×I×k×k).

    Sample ``b`` is convolved with ``w'[o, i] = weight[o, i] · styles[b, i]``, demodulated
    (``demodulate=True``) to ``w'' = w' / √(Σ_{i,k} w'² + eps)`` per output channel. Computed
    as scale, shared convolution, rescale (one ordinary convolution for the batch), which
    equals the per-sample weights exactly.
    """
    x = x * styles.reshape(*styles.shape, 1, 1)
    x = F.conv2d(x, weight, padding=padding)
    if demodulate:
        # Σ_{i,k} (weight[o,i,k] · s[b,i])² = Σ_i s[b,i]² · Σ_k weight[o,i,k]²
        coefficients = (styles.square() @ weight.square().sum(dim=(2, 3)).T + eps).rsqrt()
        x = x * coefficients.reshape(*coefficients.shape, 1, 1)
    return x


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Append the minibatch standard deviation (Karras et al. 2018) as ``num_channels`` maps.

    The batch is split into groups of ``gcd(group_size, B)`` samples (sample ``n`` goes to
    group ``n % (B / G)``); within each group, the standard deviation of every feature is
    averaged over the features of each of ``num_channels`` channel slices, and that value is
    appended to every sample of the group as a constant map. A critic sees how varied a batch
    is, which discourages mode collapse.
    """
    batch, channels, height, width = x.shape
    group = math.gcd(group_size, batch)
    y = x.reshape(group, -1, num_channels, channels // num_channels, height, width)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # M×F×c×H×W over the group
    y = y.mean(dim=(2, 3, 4)).reshape(-1, num_channels, 1, 1)  # M×F×1×1
    return torch.cat([x, y.repeat(group, 1, height, width)], dim=1)
