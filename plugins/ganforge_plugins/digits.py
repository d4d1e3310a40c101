"""scikit-learn's bundled handwritten digits (1,797 8×8 images, 10 classes): no download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ganforge import hookimpl
from ganforge.data import DataSource, ImageData


def digits_source(*, resolution: int, channels: int = 1) -> DataSource:
    """The digits, upsampled bilinearly to the recipe resolution, with labels 0–9."""
    if channels not in (1, 3):
        raise ValueError(f"digits are grey: channels must be 1 or 3, not {channels}")

    def load() -> ImageData:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False)
        images = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, channels, 1, 1)
        return ImageData(
            images.numpy(), np.asarray(digits.target, dtype=np.int64), [str(i) for i in range(10)]
        )

    # Decoding takes milliseconds: cheaper to rebuild than to cache.
    return DataSource(
        f"digits-v1-r{resolution}-c{channels}", load, "scikit-learn digits", cache=False
    )


@hookimpl
def ganforge_register_datasets(register):
    register("digits", digits_source)
