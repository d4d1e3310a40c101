"""Self-conditioning: k-means clusters of the training data as class labels.

``data.clusters = k`` trains a class-conditional G and D (conditional batch norm, a projection
critic) on k clusters of the training samples instead of labels. The generator then learns
one mode per cluster, and samples fall between the data's modes less often than from an
unconditional generator, whose continuous latent space has to bridge them (Liu et al. 2020,
"Diverse Image Generation via Self-Conditioned GANs"; there the clusters are of the critic's
features and re-computed during training; here they are of the samples themselves and fixed,
so a checkpoint holds them and a resume continues with the same ones).

Sampling draws a cluster per sample with the clusters' share of the data (the *label prior*,
stored in the export), so an export samples like an unconditional generator unless a
cluster is asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ganforge.data import ImageData
from ganforge.errors import DataError

#: Images are area-averaged down to at most this many pixels a side before clustering.
FEATURE_SIZE = 16
#: k-means is fitted on at most this many samples (seeded choice), then assigns all of them.
FIT_SAMPLES = 20_000


def features(data: ImageData, chunk: int = 4096) -> np.ndarray:
    """What the clusters are of (float32): images in [0, 1] averaged down to ≤ 16×16, or the
    points. Images are converted a chunk at a time: a float copy of a large data set (or of
    a memory-mapped store) would not fit in memory."""
    if not data.is_image:
        return np.asarray(data.images, dtype=np.float32)
    parts = []
    for start in range(0, len(data), chunk):
        chunk_array = np.asarray(data.images[start : start + chunk], dtype=np.float32)  # a copy
        x = torch.from_numpy(chunk_array).div_(255)
        if x.shape[-1] > FEATURE_SIZE:
            x = F.adaptive_avg_pool2d(x, FEATURE_SIZE)
        parts.append(x.flatten(1).numpy())
    return np.concatenate(parts)


def cluster_labels(data: ImageData, k: int, seed: int) -> np.ndarray:
    """One k-means cluster index per sample (int64), clusters numbered by size, largest first."""
    from sklearn.cluster import KMeans

    if len(data) < k:
        raise DataError(f"data.clusters = {k}, but the data has only {len(data)} samples")
    x = features(data)
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= FIT_SAMPLES else x[np.sort(rng.choice(len(x), FIT_SAMPLES, False))]
    if len(np.unique(fit, axis=0)) < k:
        raise DataError(f"data.clusters = {k}, but the data has fewer distinct samples")
    kmeans = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(fit)
    labels = kmeans.predict(x).astype(np.int64)
    # Renumber by size (ties by index): the same clustering always gets the same numbers.
    sizes = np.bincount(labels, minlength=k)
    order = np.lexsort((np.arange(k), -sizes))
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(k)
    return renumber[labels]


def label_prior(labels: np.ndarray, k: int) -> list[float]:
    """Each cluster's share of the samples: what sampling draws clusters with."""
    counts = np.bincount(np.asarray(labels), minlength=k).astype(np.float64)
    return (counts / counts.sum()).tolist()


def cluster_names(k: int) -> list[str]:
    return [f"cluster{i}" for i in range(k)]


def draw_labels(
    n: int, num_classes: int, prior: list[float] | None, rng: torch.Generator
) -> torch.Tensor:
    """``n`` class indices: from ``prior`` (clusters) when given, else uniform (classes)."""
    if prior is None:
        return torch.randint(0, num_classes, (n,), generator=rng)
    weights = torch.tensor(prior, dtype=torch.float64)
    return torch.multinomial(weights, n, replacement=True, generator=rng)


def draw_inputs(
    n: int,
    num_classes: int,
    prior: list[float] | None,
    latents: Callable[[int, torch.Generator], torch.Tensor],
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` latents and labels (None when unconditional), in the one order every sampler
    uses: labels first (:func:`draw_labels`), then ``latents(n, rng)``. Evaluation, standing
    statistics in a run and in ``ganforge export`` draw through it, so they agree."""
    y = draw_labels(n, num_classes, prior, rng) if num_classes else None
    return latents(n, rng), y
