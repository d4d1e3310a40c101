"""Input-taking generators outside the training step: their inputs made from images, a grid
of input | output | target, and the pixel scores of outputs against their targets (PSNR,
SSIM), for training's evaluation, ``ganforge eval`` and ``ganforge generate --input``.

Inputs made here come from their own seeded RNG (a random mask is the same for the same
seed), never from the training's streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ganforge.components import Input
from ganforge.data import ImageData, to_model_range


def derive(make: Input, targets: torch.Tensor, seed: int) -> torch.Tensor:
    """``make(targets)`` under its own RNG seeded with ``seed`` (the training RNG untouched)."""
    devices = [targets.device] if targets.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        return make(targets)


def split(images: torch.Tensor, data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, stored)``: a batch of ``data``'s images split into the target and the
    stored input (paired data); unpaired data is the target and its own stored input."""
    if not data.paired:
        return images, images
    return images[:, : data.target_channels], images[:, data.target_channels :]


def derive_pair(
    make: Input, images: torch.Tensor, data: ImageData, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input, target)`` for a batch of ``data``'s images, as training makes them: the
    input made from the stored input (paired data) or from the image itself, under its own
    RNG seeded with ``seed``."""
    target, stored = split(images, data)
    return derive(make, stored, seed), target


def fixed_pairs(
    make: Input, data: ImageData, count: int, seed: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` (input, target) pairs of evenly spaced samples of ``data``: what every sample
    grid of a run shows."""
    count = min(count, len(data))
    indices = np.linspace(0, len(data) - 1, count).round().astype(np.int64)
    images = to_model_range(torch.from_numpy(np.array(data.images[indices]))).to(device)
    return derive_pair(make, images, data, seed)


def as_picture(source: torch.Tensor, channels: int, resolution: int) -> torch.Tensor:
    """An input shown beside outputs: its first ``channels`` channels (grey repeated for
    colour), scaled to ``resolution`` with nearest-neighbour pixels."""
    x = source[:, :channels].float()
    if x.shape[1] < channels:
        x = x[:, :1].expand(-1, channels, -1, -1)
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="nearest")
    return x


def triplets(source: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Input, output and target of each sample, one after another (a grid row of triplets)."""
    shown = as_picture(source, output.shape[1], output.shape[-1])
    return torch.stack([shown, output.float(), target.float()], dim=1).flatten(0, 1)


def on_the_grid(x: torch.Tensor) -> torch.Tensor:
    """Images as they are saved and scored: clamped, on the 8-bit grid of the data."""
    return x.float().clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1)


class PairScores:
    """PSNR and SSIM of each output against its target, collected batch by batch."""

    def __init__(self):
        self.psnr: list[torch.Tensor] = []
        self.ssim: list[torch.Tensor] = []

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.psnr.append(psnr(output, target).double().cpu())
        self.ssim.append(ssim(output, target).double().cpu())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"psnr": torch.cat(self.psnr), "ssim": torch.cat(self.ssim)}

    @staticmethod
    def means(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
        return {name: float(values.mean()) for name, values in tensors.items()}


def paired_batches(
    generate: Callable[[torch.Tensor], torch.Tensor],
    make: Input,
    data: ImageData,
    indices: np.ndarray,
    seed: int,
    device: torch.device,
    scores: PairScores | None = None,
    batch: int = 250,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Outputs for the inputs made from ``data``'s images at ``indices`` (in order), as
    ``(x, labels)`` batches for feature extraction, the labels being their targets' (None
    without); each batch's PSNR and SSIM against its targets go to ``scores``."""
    for start in range(0, len(indices), batch):
        chosen = indices[start : start + batch]
        images = to_model_range(torch.from_numpy(np.array(data.images[chosen]))).to(device)
        source, targets = derive_pair(make, images, data, seed + start)
        with torch.no_grad():
            x = on_the_grid(generate(source))
        if scores is not None:
            scores.add(x, targets)
        labels = None if data.labels is None else torch.from_numpy(np.array(data.labels[chosen]))
        yield x, labels


def score_outputs(evaluation, generate, make: Input, data: ImageData, indices, seed, device):
    """The extracted features of the outputs for the inputs made from ``data``'s images at
    ``indices`` (``evaluation``: a prepared ``ganforge.evaluation`` run), and each output's
    PSNR and SSIM against its target (``{"psnr": ..., "ssim": ...}``, per image)."""
    scores = PairScores()
    batches = paired_batches(generate, make, data, indices, seed, device, scores)
    with torch.no_grad():
        fake = evaluation.features_of(batches, keep_samples=False)
    return fake, scores.tensors()


def psnr(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image (dB), images in [-1, 1] (peak: the range)."""
    mse = (x.float() - target.float()).div(2).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def ssim(x: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5):
    """Structural similarity of each image (Wang et al. 2004: an 11×11 Gaussian window of
    σ 1.5 over each channel, no padding, on the [0, 1] range; a smaller window for images
    smaller than it), averaged over the positions and channels."""
    a, b = x.float().add(1).div(2), target.float().add(1).div(2)
    window = min(window, a.shape[-1], a.shape[-2])
    coords = torch.arange(window, dtype=torch.float32, device=a.device) - (window - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.square()
    var_b = blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2)
    )
    return index.flatten(1).mean(1)
