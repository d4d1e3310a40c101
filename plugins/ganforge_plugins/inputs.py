"""Generator inputs derived from each training image (``[input] name = ...``): a box-downscaled
copy (super-resolution), the image itself (autoencoders) and a masked copy (inpainting).

Each runs on the device, on the batch in [-1, 1], without gradient; the core calls it once per
batch and hands the result to ``G(z, y, source=...)`` (and to a critic conditioned on it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge import hookimpl


class Downscale:
    """The image box-downscaled by ``factor`` (each output pixel the mean of a factor×factor
    block), as the 4× super-resolution benchmarks make their inputs."""

    def __init__(self, *, factor: int = 4):
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        self.factor = factor

    def shape(self, channels: int, resolution: int) -> tuple[int, int]:
        if resolution % self.factor:
            raise ValueError(f"resolution {resolution} does not divide by factor {self.factor}")
        return channels, resolution // self.factor

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, self.factor)


class Identity:
    """The image itself: what an autoencoder reconstructs."""

    def shape(self, channels: int, resolution: int) -> tuple[int, int]:
        return channels, resolution

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images


class Mask:
    """The image with a random square hole (filled with ``fill``), plus the hole as one more
    channel (1 inside): inpainting's input. The hole's side is ``size`` × the image's side, at
    a position drawn from the device's RNG."""

    def __init__(self, *, size: float = 0.5, fill: float = 0.0):
        if not 0 < size < 1:
            raise ValueError(f"size must be in (0, 1), got {size!r}")
        if not -1 <= fill <= 1:
            raise ValueError(f"fill must be in [-1, 1], got {fill!r}")
        self.size, self.fill = size, fill

    def shape(self, channels: int, resolution: int) -> tuple[int, int]:
        return channels + 1, resolution

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        side = max(1, round(self.size * h))
        top = torch.randint(0, h - side + 1, (n, 1, 1, 1), device=images.device)
        left = torch.randint(0, w - side + 1, (n, 1, 1, 1), device=images.device)
        rows = torch.arange(h, device=images.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=images.device).view(1, 1, 1, w)
        hole = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        masked = torch.where(hole, torch.full_like(images, self.fill), images)
        return torch.cat([masked, hole.to(images.dtype)], dim=1)


@hookimpl
def ganforge_register_inputs(register):
    register("downscale", Downscale)
    register("identity", Identity)
    register("mask", Mask)
