"""scikit-learn's bundled handwritten digits (1,797 8×8 images, 10 classes): no download.

Also the ``digits`` feature extractor: a small CNN classifier trained on the digits at first
use (seconds on a CPU) and cached, whose penultimate features give a Fréchet distance and whose
logits give an Inception Score for digit generators, offline.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ganforge import hookimpl
from ganforge.data import DataSource, ImageData, cache_root
from ganforge.export import tensors_digest
from ganforge.runfiles import atomic_write


def digits_source(*, resolution: int, channels: int = 1, fraction: float = 1.0) -> DataSource:
    """The digits, upsampled bilinearly to the recipe resolution, with labels 0–9.

    ``fraction`` < 1 keeps that share of each class (a fixed, seeded choice): small-data
    experiments such as augmentation on 10% of the digits.
    """
    if channels not in (1, 3):
        raise ValueError(f"digits are grey: channels must be 1 or 3, not {channels}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")

    def load() -> ImageData:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False)
        images = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, channels, 1, 1)
        labels = np.asarray(digits.target, dtype=np.int64)
        keep = stratified_subset(labels, fraction)
        return ImageData(images.numpy()[keep], labels[keep], [str(i) for i in range(10)])

    subset = "" if fraction == 1 else f"-f{fraction!r}"
    # Decoding takes milliseconds: cheaper to rebuild than to cache.
    return DataSource(
        f"digits-v1-r{resolution}-c{channels}{subset}",
        load,
        "scikit-learn digits",
        cache=False,
        metadata={"eval_extractor": "digits"},
    )


def stratified_subset(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Sorted indices of ``fraction`` of each class (at least one), chosen with seed 0."""
    if fraction == 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.append(rng.choice(members, max(1, round(fraction * len(members))), replace=False))
    return np.sort(np.concatenate(keep))


class DigitsClassifier(nn.Module):
    """A small CNN on 32×32 digits; features are its 64-d penultimate layer before the ReLU
    (after it, units dead on every input would make covariances singular)."""

    num_classes = 10
    fingerprint = "digits-cnn-v1"

    def __init__(self):
        super().__init__()
        blocks = [
            nn.Sequential(
                nn.Conv2d(c, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2)
            )
            for c, c2 in ((1, 32), (32, 64))
        ]  # 16 -> 8 -> 4
        self.body = nn.Sequential(nn.AvgPool2d(2), *blocks, nn.Flatten(), nn.Linear(64 * 16, 64))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] at any resolution, 1 or 3 channels -> (features, logits)."""
        x = x.float().mean(1, keepdim=True)  # grey
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
        features = self.body(x)
        return features, self.head(features)


def _digits_split():
    """The digits at 32 px in [-1, 1], split 80/20 (stratified, seeded) for the classifier."""
    data = digits_source(resolution=32).load()
    x = torch.from_numpy(data.images).float().div(127.5).sub(1)
    y = torch.from_numpy(data.labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test = torch.zeros(len(x), dtype=torch.bool)
    for c in range(10):
        members = order[y[order] == c]
        test[members[: len(members) // 5]] = True
    return x[~test], y[~test], x[test], y[test]


def train_digits_classifier(epochs: int = 12, log=None) -> tuple[DigitsClassifier, float]:
    """Adam with ±2 px shifts; returns the network (eval mode) and its held-out accuracy.
    ``log(message)`` hears of each epoch."""
    x, y, x_test, y_test = _digits_split()
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # leaves the caller's random streams alone
        torch.manual_seed(0)
        net = DigitsClassifier()
        opt = torch.optim.Adam(net.parameters(), 2e-3)
        for epoch in range(epochs):
            if log is not None:
                log(f"ganforge: digits classifier: epoch {epoch + 1}/{epochs}")
            for idx in torch.randperm(len(x), generator=gen).split(64):
                shift = tuple(torch.randint(-2, 3, (2,), generator=gen).tolist())
                _, logits = net(torch.roll(x[idx], shift, (2, 3)))
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test)[1].argmax(1) == y_test).float().mean().item()
    return net, accuracy


def digits_extractor() -> DigitsClassifier:
    """The digits classifier, trained at first use and cached (safetensors)."""
    path = cache_root() / "eval" / "digits-cnn-v1.safetensors"
    train = lambda log: train_digits_classifier(log=log)  # noqa: E731
    net, _ = cached_classifier(path, DigitsClassifier(), train, "digits")
    return ready_classifier(net, "digits-cnn-v1")


def keep_classifier(path, net: nn.Module, accuracy: float) -> None:
    """Write a trained classifier's weights to the cache (safetensors, atomically), with its
    held-out accuracy and the digest of its tensors, which :func:`cached_classifier` checks."""
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    metadata = {"test_accuracy": repr(accuracy), "digest": tensors_digest(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cached_classifier(
    path: Path, net: nn.Module, train: Callable, what: str, tested_on: str = "held-out"
) -> tuple[nn.Module, float]:
    """A classifier trained at first use: from the cache when its file is whole, else trained
    by ``train(log) -> (net, accuracy)`` and cached. A cached file must carry the digest of
    its tensors recorded when it was trained: a damaged or replaced file (a randomly
    initialised one once gave an Inception Score of 1.0 without a word) is trained again,
    with a warning."""
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        if metadata.get("digest") != tensors_digest(tensors):
            raise ValueError("its weights do not match the digest recorded when it was trained")
        net.load_state_dict(tensors)
        return net, float(metadata["test_accuracy"])
    except FileNotFoundError:
        pass
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as err:
        _log(f"ganforge: warning: the cached {what} classifier {path} is unusable ({err})")
    _log(f"ganforge: training the {what} classifier for evaluation (once; about a minute)")
    net, accuracy = train(_log)
    keep_classifier(path, net, accuracy)
    _log(f"ganforge: {what} classifier: {tested_on} accuracy {accuracy:.2%}, kept in {path}")
    return net, accuracy


def ready_classifier(net: nn.Module, name: str) -> nn.Module:
    """A classifier as an extractor: its fingerprint names its weights, not the recipe."""
    net.fingerprint = f"{name}-{tensors_digest(net.state_dict())[:12]}"
    return net.eval().requires_grad_(False)


@hookimpl
def ganforge_register_datasets(register):
    register("digits", digits_source)


@hookimpl
def ganforge_register_feature_extractors(register):
    register("digits", digits_extractor)
