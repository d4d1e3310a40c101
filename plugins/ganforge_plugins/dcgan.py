"""DCGAN generator and discriminator (Radford et al. 2015) for 16–128 px images."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ganforge import hookimpl
from ganforge.components import CriticOutput
from ganforge_plugins._layers import (
    check_resolution,
    critic_output,
    dropout_layers,
    spectral_norm_all,
)


def _upsamplings(resolution: int) -> int:
    check_resolution("DCGAN", resolution, (16, 32, 64, 128))
    return int(math.log2(resolution)) - 2  # from 4×4 up to the resolution


def _init_weights(module: nn.Module) -> None:
    """The paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """Transposed convolutions from a 4×4 seed, batch norm and ReLU, tanh output."""

    latent_prior = "normal"

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        latent_dim: int = 100,
        width: int = 64,
    ):
        super().__init__()
        ups = _upsamplings(resolution)
        self.latent_shape = (latent_dim,)
        widths = [width * 2**i for i in reversed(range(ups))]  # e.g. 32px: 4w, 2w, w
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for cin, cout in zip(widths, widths[1:], strict=False):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], -1, 1, 1))


def _norm_layer(norm: str, channels: int) -> list[nn.Module]:
    if norm == "batch":
        return [nn.BatchNorm2d(channels)]
    if norm == "layer":
        # Over C×H×W per sample with a per-channel scale and shift: WGAN-GP's critic layer norm,
        # and unlike nn.LayerNorm([C, H, W]) it does not tie its parameters to one resolution.
        return [nn.GroupNorm(1, channels)]
    return []


class DCGANDiscriminator(nn.Module):
    """Strided convolutions with leaky ReLU down to 4×4, then one 4×4 convolution to a logit.

    ``norm``: ``"batch"`` is the paper's; ``"none"`` and ``"layer"`` (per-sample layer norm)
    suit critics with gradient penalties, whose per-sample gradients batch norm would mix;
    ``"spectral"`` spectrally normalises every layer (SNGAN), without batch norm.
    ``dropout`` follows each hidden activation (CT-GAN's consistency term perturbs D with it).
    Returns the logits and the flattened activations the last layer reads as ``features``.
    """

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        width: int = 64,
        norm: Literal["batch", "none", "layer", "spectral"] = "batch",
        dropout: float = 0.0,
    ):
        super().__init__()
        downs = _upsamplings(resolution)
        widths = [width * 2**i for i in range(downs)]  # e.g. 32px: w, 2w, 4w
        layers: list[nn.Module] = [
            nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
            *dropout_layers(dropout),
        ]
        for cin, cout in zip(widths, widths[1:], strict=False):
            # A bias only where no normalisation layer with its own shift follows.
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=norm in ("none", "spectral")))
            layers += [*_norm_layer(norm, cout), nn.LeakyReLU(0.2, True), *dropout_layers(dropout)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        _init_weights(self)
        if norm == "spectral":
            spectral_norm_all(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> CriticOutput:
        return critic_output(self.net[:-1](x), self.net[-1])


@hookimpl
def ganforge_register_generators(register):
    register("dcgan", DCGANGenerator)


@hookimpl
def ganforge_register_discriminators(register):
    register("dcgan", DCGANDiscriminator)
