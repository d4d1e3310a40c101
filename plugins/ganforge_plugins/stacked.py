"""Stacked data, the classic mode-coverage test: three images of a labelled grey source in the
three channels of one sample, one mode per triple of labels (Stacked MNIST: 1,000 modes).

- ``stacked`` data source: ``source`` is the base data's recipe table (``{ name = "idx",
  path = "..." }``, ``{ name = "fashion_mnist" }``, ``{ name = "digits" }``); each of ``size``
  samples stacks three base images drawn uniformly with ``seed``; its label (for the
  metric) is ``a·K² + b·K + c`` for base labels a, b, c of K classes.
- ``stacked`` feature extractor: a classifier of the base images (the 28-px CNN of the
  ``fashion_mnist`` extractor), trained at first use on 90% of the base training images and
  cached per base data; it classifies each channel, and its logits over the K³ modes are the
  sums of the channels' log-probabilities, so the predicted mode is the triple of the
  channels' predictions.
- ``modes`` metric: the modes the generated samples cover (at least one sample predicted in
  it, as VEEGAN and PacGAN count them) and the KL divergence of the generated mode
  distribution from the uniform one; the real reference's own values beside them.

The protocol of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018) scores 26,000
samples: ``eval.num = 26000`` (the data then needs at least 52,000 samples).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from ganforge import hookimpl
from ganforge.data import DataSource, ImageData, cache_root, open_store
from ganforge.errors import DataError
from ganforge.evaluation import EvalContext, EvalError, Features
from ganforge.rows import Chunk, Rows
from ganforge_plugins.digits import cached_classifier, ready_classifier
from ganforge_plugins.idx import FashionClassifier, accuracy, fit_classifier


def _base(source: dict[str, Any], resolution: int) -> DataSource:
    """The base data source the ``source`` table names, built like a recipe's ``[data]``."""
    if not isinstance(source, dict) or not isinstance(source.get("name"), str):
        raise ValueError('source must be a table naming the base data: { name = "idx", ... }')
    if source["name"] == "stacked":
        raise ValueError("source cannot itself be stacked")
    from ganforge.plugins import Plugins

    options = {k: v for k, v in source.items() if k != "name"}
    registry = Plugins().registry
    return registry.build(
        "dataset", source["name"], {"resolution": resolution}, options, DataSource, where="data"
    )


def _grey_labelled(data: ImageData, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    if data.labels is None or data.num_classes < 2:
        raise DataError(f"stacked: the base data ({what}) has no labels: stacking needs classes")
    if data.images.ndim != 4 or data.images.shape[1] != 1:
        raise DataError(f"stacked: the base data ({what}) must be grey: set its channels = 1")
    return data.images, np.asarray(data.labels), data.num_classes


def stacked_source(
    *, resolution: int, source: dict[str, Any], size: int = 100_000, seed: int = 0
) -> DataSource:
    """``size`` samples, each three base images (drawn with ``seed``) in three channels."""
    if not resolution:
        raise ValueError("stacked images need data.resolution (e.g. 32 for 28-px digits)")
    if isinstance(size, bool) or not 1 <= size <= 10_000_000:
        raise ValueError(f"size must be in 1..10000000, not {size!r}")
    base = _base(source, resolution)
    fingerprint = {"v": "stacked-v1", "base": base.fingerprint, "size": size, "seed": seed}

    def rows() -> Rows:
        images, labels, k = _grey_labelled(open_store(base, resolution), base.description)
        picks = np.random.default_rng(seed).integers(0, len(images), size=(size, 3))

        def decode(start: int, stop: int) -> Chunk:
            chosen = picks[start:stop]
            stacked = images[chosen.reshape(-1), 0].reshape(len(chosen), 3, *images.shape[2:])
            a, b, c = labels[chosen].T
            return Chunk(stacked, (a * k + b) * k + c, [])

        digits = len(str(k - 1))
        names = [
            "-".join(str(d).zfill(digits) for d in np.unravel_index(m, (k, k, k)))
            for m in range(k**3)
        ]
        return Rows(size, (3, resolution, resolution), decode, True, names)

    metadata = {
        "eval_extractor": "stacked",
        "eval_extractor_options": {"source": dict(source), "resolution": resolution},
        "eval_metrics": ["modes"],
    }
    if "native_crop" in base.metadata:
        metadata["native_crop"] = base.metadata["native_crop"]
    return DataSource(
        json.dumps(fingerprint, sort_keys=True),
        description=f"stacked {base.description}",
        metadata=metadata,
        rows=rows,
    )


# --------------------------------------------------------------------------- the extractor


class StackedClassifier(nn.Module):
    """The base classifier applied to each channel; features are the three channels' features
    side by side, logits (N × K³) the sums of their log-probabilities."""

    def __init__(self, channel: nn.Module, classes: int):
        super().__init__()
        self.channel, self.classes, self.num_classes = channel, classes, classes**3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = len(x), self.classes
        features, logits = self.channel(x.float().reshape(n * 3, 1, *x.shape[2:]))
        logp = logits.log_softmax(1).reshape(n, 3, k)
        joint = logp[:, 0, :, None, None] + logp[:, 1, None, :, None] + logp[:, 2, None, None, :]
        return features.reshape(n, -1), joint.reshape(n, k**3)


def train_channel_classifier(
    images: np.ndarray, labels: np.ndarray, classes: int, epochs: int, log=print
) -> tuple[nn.Module, float]:
    """The base classifier on 90% of the base images (seeded), with ±2 px shifts; returns it
    (eval mode) and its accuracy on the other 10%."""
    x = torch.from_numpy(np.array(images)).float().div(127.5).sub(1)
    y = torch.from_numpy(labels.astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    held, kept = order[: len(x) // 10], order[len(x) // 10 :]
    net = fit_classifier(
        lambda: FashionClassifier(classes), x[kept], y[kept], epochs, log, "stacked"
    )
    return net, accuracy(net, x[held], y[held])


def stacked_extractor(source: dict[str, Any], resolution: int = 32, epochs: int = 4):
    """The per-channel classifier of ``source`` (the stacked data's base), trained at first
    use at ``resolution`` and cached per base data and epochs."""
    base = _base(source, resolution)
    images, labels, classes = _grey_labelled(open_store(base, resolution), base.description)
    key = hashlib.sha256(f"{base.fingerprint}|{resolution}|{epochs}".encode()).hexdigest()[:16]
    path = cache_root() / "eval" / f"stacked-cnn-v1-{key}.safetensors"

    def train(log):
        return train_channel_classifier(images, labels, classes, epochs, log)

    channel, accuracy = cached_classifier(path, FashionClassifier(classes), train, "stacked")
    net = ready_classifier(StackedClassifier(channel, classes), "stacked-cnn-v1")
    net.test_accuracy = accuracy
    return net


# --------------------------------------------------------------------------- the metric


def mode_counts(logits: torch.Tensor) -> tuple[int, float]:
    """Modes covered (at least one sample predicted in it) and KL(generated ‖ uniform)."""
    modes = logits.shape[1]
    counts = torch.bincount(logits.argmax(1), minlength=modes).double()
    q = counts[counts > 0] / counts.sum()
    return int((counts > 0).sum()), float((q * (q * modes).log()).sum())


class StackedModes:
    """Modes covered and KL to uniform, by the ``stacked`` extractor's predicted triples."""

    legend = {
        "": "modes with at least one generated sample (of modes/num_modes); higher is better",
        "kl": "KL(generated modes ‖ uniform); lower is better",
        "real": "modes the real reference covers (the same number of samples)",
        "real_kl": "the real reference's KL to uniform",
    }

    def __call__(self, real: Features, fake: Features, context: EvalContext) -> dict:
        if fake.logits is None or real.logits is None:
            raise EvalError(
                "metric 'modes' needs an extractor with class logits: the stacked data's own "
                "(data name 'stacked') counts its label triples"
            )
        covered, kl = mode_counts(fake.logits)
        real_covered, real_kl = mode_counts(real.logits)
        return {
            "": covered,
            "kl": kl,
            "num_modes": fake.logits.shape[1],
            "real": real_covered,
            "real_kl": real_kl,
        }


@hookimpl
def ganforge_register_datasets(register):
    register("stacked", stacked_source)


@hookimpl
def ganforge_register_feature_extractors(register):
    register("stacked", stacked_extractor)


@hookimpl
def ganforge_register_metrics(register):
    register("modes", StackedModes)
