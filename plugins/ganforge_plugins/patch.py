"""A patch critic (pix2pix's PatchGAN, also VQGAN's): a logit for each overlapping patch of
an image, optionally conditioned on the generator's input (``[input]``), with spectral
normalisation on every layer. Registered as the ``patch`` discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganforge import hookimpl


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


@hookimpl
def ganforge_register_discriminators(register):
    register("patch", PatchCritic)
