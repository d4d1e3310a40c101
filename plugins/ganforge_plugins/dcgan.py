"""DCGAN generator and discriminator (Radford et al. 2015) for 16–128 px images.

Both condition on class labels when built with ``num_classes`` > 0: G through class-conditional
batch norm, D through a projection or an auxiliary classifier (``condition``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ganforge import hookimpl
from ganforge.components import CriticOutput
from ganforge_plugins._layers import (
    Condition,
    ConditionalBatchNorm2d,
    ConditionalSequential,
    CriticConditioning,
    batch_norm,
    check_condition,
    check_resolution,
    check_sizes,
    critic_output,
    dropout_layers,
    require_labels,
    spectral_norm_all,
)

#: The paper's standard deviation for initial weights.
INIT_STD = 0.02


def _upsamplings(resolution: int) -> int:
    check_resolution("DCGAN", resolution, (16, 32, 64, 128))
    return int(math.log2(resolution)) - 2  # from 4×4 up to the resolution


def _init_weights(module: nn.Module) -> None:
    """The paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales
    (per class too, in conditional batch norm)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.bias)
        elif isinstance(m, ConditionalBatchNorm2d):
            nn.init.normal_(m.scale.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.shift.weight)


class DCGANGenerator(nn.Module):
    """Transposed convolutions from a 4×4 seed, batch norm and ReLU, tanh output.

    With ``num_classes`` > 0 every batch norm is class-conditional (a scale and shift per
    class) and ``G(z, y)`` needs the labels; with 0 the model is the paper's.
    """

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
        check_sizes(latent_dim=latent_dim, width=width)
        ups = _upsamplings(resolution)
        self.num_classes = num_classes
        self.latent_shape = (latent_dim,)
        widths = [width * 2**i for i in reversed(range(ups))]  # e.g. 32px: 4w, 2w, w
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            batch_norm(widths[0], num_classes),
            nn.ReLU(True),
        ]
        for cin, cout in zip(widths, widths[1:], strict=False):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                batch_norm(cout, num_classes),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = ConditionalSequential(*layers)
        _init_weights(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        require_labels(self, self.num_classes, y)
        return self.net(z.reshape(z.shape[0], -1, 1, 1), y)


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

    With ``num_classes`` > 0, ``condition`` says how D reads the labels from the 4×4 map the
    last layer reads, summed over positions: ``"projection"`` adds its dot product with a
    class embedding to the logit (Miyato & Koyama 2018; the embedding is spectrally normalised
    with ``norm = "spectral"``); ``"auxiliary"`` adds a linear classifier whose
    ``class_logits`` serve the ``acgan`` loss (Odena et al. 2017). With 0 it is ignored.
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
        condition: Condition = "projection",
    ):
        super().__init__()
        check_condition(condition)
        check_sizes(width=width)
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
        self.conditioning = (
            CriticConditioning(condition, widths[-1], num_classes, init_std=INIT_STD)
            if num_classes
            else None
        )
        if norm == "spectral":
            spectral_norm_all(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> CriticOutput:
        return critic_output(self.net[:-1](x), self.net[-1], self.conditioning, y)


@hookimpl
def ganforge_register_generators(register):
    register("dcgan", DCGANGenerator, conditional=True)


@hookimpl
def ganforge_register_discriminators(register):
    register("dcgan", DCGANDiscriminator, conditional=True)
