"""Procedural images at any resolution and channel count: run any recipe without a dataset."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ganforge import hookimpl
from ganforge.data import DataSource, ImageData


def synthetic_source(
    *,
    resolution: int,
    channels: int = 3,
    size: int = 256,
    num_classes: int = 0,
    pattern: Literal["blobs", "noise"] = "blobs",
    seed: int = 0,
) -> DataSource:
    """``size`` images: "blobs" draws one bright disc per image (its colour and quadrant set by
    the class when ``num_classes`` > 0), "noise" is uniform noise. Same seed, same images."""
    if size < 1 or channels < 1 or num_classes < 0:
        raise ValueError("size and channels must be >= 1, num_classes >= 0")

    def load() -> ImageData:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, max(num_classes, 1), size)
        if pattern == "noise":
            images = rng.integers(0, 256, (size, channels, resolution, resolution), dtype=np.uint8)
        else:
            images = _blobs(rng, labels, num_classes, channels, resolution)
        if not num_classes:
            return ImageData(images)
        return ImageData(
            images, labels.astype(np.int64), [f"class_{i}" for i in range(num_classes)]
        )

    fingerprint = f"synthetic-v1-{pattern}-r{resolution}-c{channels}-n{size}-k{num_classes}-s{seed}"
    return DataSource(fingerprint, load, "synthetic images", cache=False)


def _blobs(rng, labels, num_classes, channels, resolution) -> np.ndarray:
    size = len(labels)
    yy, xx = np.mgrid[0:resolution, 0:resolution] / max(resolution - 1, 1)
    # Class k puts its disc in quadrant k % 4 and tints it with a class-specific colour.
    quadrant = labels % 4 if num_classes else rng.integers(0, 4, size)
    cy = 0.3 + 0.4 * (quadrant // 2) + rng.uniform(-0.08, 0.08, size)
    cx = 0.3 + 0.4 * (quadrant % 2) + rng.uniform(-0.08, 0.08, size)
    radius = rng.uniform(0.12, 0.2, size)
    inside = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    disc = inside < radius[:, None, None] ** 2
    palette = np.random.default_rng(1234).uniform(0.35, 1.0, (max(num_classes, 1), channels))
    colour = palette[labels] if num_classes else rng.uniform(0.35, 1.0, (size, channels))
    images = disc[:, None] * colour[:, :, None, None] * 255
    return images.round().astype(np.uint8)


@hookimpl
def ganforge_register_datasets(register):
    register("synthetic", synthetic_source)
