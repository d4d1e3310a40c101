"""DCGAN generator and discriminator (Radford et al. 2015) for 16–128 px images."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ganforge import hookimpl


def _upsamplings(resolution: int) -> int:
    if resolution not in (16, 32, 64, 128):
        raise ValueError(f"DCGAN supports resolutions 16, 32, 64 and 128, not {resolution}")
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


class DCGANDiscriminator(nn.Module):
    """Strided convolutions with leaky ReLU down to 4×4, then one 4×4 convolution to a logit.

    ``norm = "batch"`` is the paper's; ``"none"`` suits critics with gradient penalties.
    """

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        width: int = 64,
        norm: Literal["batch", "none"] = "batch",
    ):
        super().__init__()
        downs = _upsamplings(resolution)
        widths = [width * 2**i for i in range(downs)]  # e.g. 32px: w, 2w, 4w
        layers: list[nn.Module] = [
            nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
        ]
        for cin, cout in zip(widths, widths[1:], strict=False):
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, True))
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).flatten(1)


@hookimpl
def ganforge_register_generators(register):
    register("dcgan", DCGANGenerator)


@hookimpl
def ganforge_register_discriminators(register):
    register("dcgan", DCGANDiscriminator)
