"""Toy 2-D data where the right answer is known, and the MLPs that model it.

The sets follow the WGAN-GP paper (Gulrajani et al. 2017): ``8gaussians``, ``25gaussians``
(centres 2(i, j)/2.828 for i, j in −2..2, σ = 0.05/2.828) and ``swissroll``; ``ring`` is a
continuous circle, a manifold without modes. :func:`mode_stats` scores samples against them.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import nn

from ganforge import hookimpl
from ganforge.components import CriticOutput
from ganforge.data import DataSource, ImageData

ToySet = Literal["8gaussians", "25gaussians", "swissroll", "ring"]


def centres(dataset: str) -> tuple[np.ndarray, float] | None:
    """The mode centres and standard deviation of a Gaussian-mixture set, else None."""
    if dataset == "25gaussians":
        grid = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=np.float64)
        return 2 * grid / 2.828, 0.05 / 2.828
    if dataset == "8gaussians":
        angles = np.arange(8) * math.pi / 4
        return 2 * np.stack([np.cos(angles), np.sin(angles)], 1) / 1.414, 0.02 / 1.414
    return None


def sample_toy(dataset: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of ``dataset`` as float32 n×2."""
    mixture = centres(dataset)
    if mixture is not None:
        means, sigma = mixture
        points = means[rng.integers(0, len(means), n)] + rng.normal(0, sigma, (n, 2))
    elif dataset == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * rng.random(n))
        points = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.normal(0, 0.25, (n, 2))
        points /= 7.5  # the WGAN-GP paper's scale
    elif dataset == "ring":
        angle = rng.random(n) * 2 * math.pi
        radius = 1 + rng.normal(0, 0.05, n)
        points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    else:
        raise ValueError(f"unknown toy set {dataset!r}")
    return points.astype(np.float32)


def toy2d_source(
    *, resolution: int, dataset: ToySet = "25gaussians", size: int = 100_000, seed: int = 0
) -> DataSource:
    """``size`` points drawn once from a toy 2-D distribution (point data, no resolution)."""
    if size < 1:
        raise ValueError("size must be >= 1")

    def load() -> ImageData:
        return ImageData(sample_toy(dataset, size, np.random.default_rng(seed)))

    metadata = {"toy2d": dataset}
    if centres(dataset) is not None:  # mixtures are scored by the modes they cover
        metadata["eval_metrics"] = ["toy2d"]
    return DataSource(
        f"toy2d-v1-{dataset}-n{size}-s{seed}",
        load,
        f"toy2d {dataset}",
        cache=False,
        metadata=metadata,
    )


class ToyModes:
    """Modes covered and high-quality fraction of generated points (mixtures of Gaussians)."""

    def __call__(self, real, fake, context) -> dict:
        from ganforge.evaluation import EvalError

        dataset = context.data_metadata.get("toy2d")
        if fake.samples is None or dataset is None or centres(dataset) is None:
            raise EvalError("metric 'toy2d' is for the toy2d mixtures (8gaussians, 25gaussians)")
        stats = mode_stats(fake.samples.numpy(), dataset)
        return {"modes": stats["modes"], "high_quality": stats["high_quality"]}


def mode_stats(points: np.ndarray, dataset: str) -> dict[str, float]:
    """Modes covered (≥ 1% of samples within 3σ of the centre) and the high-quality fraction
    (samples within 3σ of any centre), as in the WGAN-GP toy experiments."""
    mixture = centres(dataset)
    if mixture is None:
        raise ValueError(f"{dataset!r} has no modes")
    means, sigma = mixture
    distance = np.linalg.norm(points[:, None, :] - means[None], axis=2)
    near = distance.min(1) < 3 * sigma
    counts = np.bincount(distance.argmin(1)[near], minlength=len(means))
    return {
        "modes": int((counts >= 0.01 * len(points)).sum()),
        "num_modes": len(means),
        "high_quality": float(near.mean()),
    }


def _mlp(inputs: int, hidden: int, depth: int, outputs: int, dropout: float = 0.0):
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(inputs if i == 0 else hidden, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers), nn.Linear(hidden if depth else inputs, outputs)


class MLPGenerator(nn.Module):
    """A ReLU MLP from a ``latent_dim`` Gaussian to points (the WGAN-GP toy generator)."""

    latent_prior = "normal"

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        latent_dim: int = 2,
        hidden: int = 512,
        depth: int = 3,
    ):
        super().__init__()
        if resolution:
            raise ValueError("the MLP generator models point data (no data.resolution)")
        self.latent_shape = (latent_dim,)
        body, head = _mlp(latent_dim, hidden, depth, channels)
        self.net = nn.Sequential(body, head)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """A ReLU MLP critic; ``dropout`` after each hidden layer (for the consistency term)."""

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        hidden: int = 512,
        depth: int = 3,
        dropout: float = 0.0,
    ):
        super().__init__()
        if resolution:
            raise ValueError("the MLP discriminator models point data (no data.resolution)")
        self.body, self.head = _mlp(channels, hidden, depth, 1, dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> CriticOutput:
        features = self.body(x)
        return CriticOutput(logits=self.head(features).squeeze(1), features=features)


@hookimpl
def ganforge_register_datasets(register):
    register("toy2d", toy2d_source)


@hookimpl
def ganforge_register_generators(register):
    register("mlp", MLPGenerator)


@hookimpl
def ganforge_register_discriminators(register):
    register("mlp", MLPDiscriminator)


@hookimpl
def ganforge_register_metrics(register):
    register("toy2d", ToyModes)
