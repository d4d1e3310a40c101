"""DiffAugment (Zhao et al. 2020): differentiable colour, translation and cutout.

The transforms of the authors' reference code, applied by the core to every image the critic
sees (``[augment] name = "diffaugment"``). Each transform applies to each image with
probability ``p`` (1 in DiffAugment; adapted by the core when ``augment.adaptive = true``, as in
ADA). Gradients reach the images through every transform: colour is affine in the pixels,
translation and cutout move or zero them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from ganforge import hookimpl

Transform = Callable[[torch.Tensor], torch.Tensor]


def _uniform(x: torch.Tensor) -> torch.Tensor:
    """One U(0, 1) draw per image, shaped to broadcast over C×H×W."""
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Add U(-0.5, 0.5) to every pixel of an image."""
    return x + (_uniform(x) - 0.5)


def saturation(x: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's distance from its channel mean by U(0, 2) (no-op on grey images)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_uniform(x) * 2) + mean


def contrast(x: torch.Tensor) -> torch.Tensor:
    """Scale the distance from the image mean by U(0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x) + 0.5) + mean


def translate(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size in each direction, zero-filled."""
    b, c, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    # Gather each output pixel from the image zero-padded by the largest shift (a gather is
    # several times faster than advanced indexing, forward and backward).
    index = (rows + max_dy + dy) * (w + 2 * max_dx) + (cols + max_dx + dx)
    padded = F.pad(x, (max_dx, max_dx, max_dy, max_dy)).flatten(2)
    return padded.gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def cut_out(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one square of ``ratio`` × the image size per image, centred anywhere in it."""
    b, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - size_y % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - size_x % 2), (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside_y = (rows >= cy - size_y // 2) & (rows < cy - size_y // 2 + size_y)
    inside_x = (cols >= cx - size_x // 2) & (cols < cx - size_x // 2 + size_x)
    keep = ~(inside_y & inside_x)
    return x * keep.unsqueeze(1).to(x.dtype)


POLICIES = ("color", "translation", "cutout")


class DiffAugment:
    """The reference policies in order: ``color`` (brightness, saturation, contrast),
    ``translation`` (up to ``translation`` × size, 1/8 by default), ``cutout`` (a square of
    ``cutout`` × size, 1/2 by default)."""

    def __init__(
        self,
        policy: Sequence[str] = POLICIES,
        translation: float = 0.125,
        cutout: float = 0.5,
    ):
        unknown = [name for name in policy if name not in POLICIES]
        if unknown or not policy:
            raise ValueError(f"policy must list some of {', '.join(POLICIES)}; got {policy!r}")
        for name, value in (("translation", translation), ("cutout", cutout)):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], not {value}")
        by_name: dict[str, list[Transform]] = {
            "color": [brightness, saturation, contrast],
            "translation": [partial(translate, ratio=translation)],
            "cutout": [partial(cut_out, ratio=cutout)],
        }
        self.policy = tuple(policy)
        self.transforms = [t for name in POLICIES if name in policy for t in by_name[name]]

    def __call__(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError("DiffAugment transforms images (B×C×H×W), not point data")
        for transform in self.transforms:
            # Each image takes the transform with probability p: a per-image choice, so p
            # stays a device tensor and the step never waits for the host.
            chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
            x = torch.where(chosen, transform(x), x)
        return x


@hookimpl
def ganforge_register_augmentations(register):
    register("diffaugment", DiffAugment)
