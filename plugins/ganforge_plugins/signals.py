"""A 1-D toy for several critics: numpy-generated periodic signals, and the two kinds of
critic a HiFi-GAN vocoder trains together.

- ``signals`` (data): ``size`` sine waves of ``length`` samples, each with a period drawn
  from ``periods``, a random phase and an amplitude in [0.5, 1], plus a little noise. Point
  data: each signal is one N-dimensional sample, modelled by the ``mlp`` generator.
- ``signal_period`` (discriminator): HiFi-GAN's multi-period critic. For each period p the
  signal is folded into a (length/p)×p image and 2-D convolutions run along its columns, so
  each sub-critic sees samples p apart.
- ``signal_scale`` (discriminator): HiFi-GAN's multi-scale critic: 1-D convolutions on the
  signal and on average-pooled (coarser) copies of it.

Both return every layer's activations as ``CriticOutput.features`` (for
``[regularizers.feature_matching]``) and a logit per position. The ``signals`` metric scores
generated signals by their dominant period.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganforge import hookimpl
from ganforge.components import CriticOutput
from ganforge.data import DataSource, ImageData


def _check_periods(periods: list[int], length: int) -> list[int]:
    if not periods or any(not isinstance(p, int) or not 2 <= p <= length // 2 for p in periods):
        raise ValueError(f"periods must be integers in 2..{length // 2}, got {periods!r}")
    return list(periods)


def make_signals(
    size: int, length: int, periods: list[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``size`` signals (float32 size×length) and the index of each one's period."""
    which = rng.integers(0, len(periods), size)
    period = np.asarray(periods, dtype=np.float64)[which][:, None]
    phase = rng.uniform(0, 2 * np.pi, (size, 1))
    amplitude = rng.uniform(0.5, 1.0, (size, 1))
    t = np.arange(length)[None]
    signals = amplitude * np.sin(2 * np.pi * t / period + phase)
    signals += rng.normal(0, 0.02, signals.shape)
    return signals.astype(np.float32), which


def signals_source(
    *,
    resolution: int,
    length: int = 64,
    periods: list[int] = [4, 8, 16],  # noqa: B006 (never mutated; shown in the signature)
    size: int = 20_000,
    seed: int = 0,
) -> DataSource:
    """Periodic 1-D signals (point data: set no data.resolution)."""
    if resolution:
        raise ValueError("signals are point data: leave data.resolution out")
    if not 8 <= length <= 65_536:
        raise ValueError(f"length must be in 8..65536, got {length}")
    if size < 1:
        raise ValueError("size must be >= 1")
    periods = _check_periods(periods, length)

    def load() -> ImageData:
        signals, _ = make_signals(size, length, periods, np.random.default_rng(seed))
        return ImageData(signals)

    fingerprint = f"signals-v1-l{length}-p{'_'.join(map(str, periods))}-n{size}-s{seed}"
    metadata = {"signals": {"periods": periods}, "eval_metrics": ["signals"]}
    return DataSource(fingerprint, load, f"signals {periods}", cache=False, metadata=metadata)


def dominant_period(signals: np.ndarray) -> np.ndarray:
    """Each signal's period at its strongest frequency (the mean removed)."""
    spectrum = np.abs(np.fft.rfft(signals - signals.mean(1, keepdims=True), axis=1))
    spectrum[:, 0] = 0
    frequency = spectrum.argmax(1)
    return np.where(frequency > 0, signals.shape[1] / np.maximum(frequency, 1), np.inf)


class SignalStats:
    """``period_match``: the share of generated signals whose dominant period is one of the
    data's; ``periods_covered``: how many of the data's periods at least 5% of them have."""

    def __call__(self, real, fake, context) -> dict:
        from ganforge.evaluation import EvalError

        periods = context.data_metadata.get("signals", {}).get("periods")
        if fake.samples is None or not periods:
            raise EvalError("metric 'signals' is for the signals data")
        found = dominant_period(fake.samples.numpy())
        hits = np.isclose(found[:, None], np.asarray(periods, dtype=np.float64)[None], rtol=0.02)
        shares = hits.mean(0)
        return {
            "period_match": float(hits.any(1).mean()),
            "periods_covered": int((shares >= 0.05).sum()),
        }


def _check_signal_critic(resolution: int, num_classes: int, width: int, layers: int) -> None:
    if resolution:
        raise ValueError("this critic models 1-D signals (point data: no data.resolution)")
    if num_classes:
        raise ValueError("this critic takes no labels")
    if width < 1 or layers < 1:
        raise ValueError(f"width and layers must be >= 1, got {width} and {layers}")


def _sub_critic(conv, layers: int, width: int, body: tuple, head: tuple) -> nn.ModuleList:
    """``layers`` convolutions ``conv(cin, cout, *body)`` (``width`` channels, doubled each)
    and one ``conv(cin, 1, *head)`` to a logit per position."""
    convs, cin = [], 1
    for i in range(layers):
        cout = width * 2**i
        convs.append(conv(cin, cout, *body))
        cin = cout
    convs.append(conv(cin, 1, *head))
    return nn.ModuleList(convs)


def _run(convs: nn.ModuleList, h: torch.Tensor, features: list) -> torch.Tensor:
    """A sub-critic's logits of ``h`` (B×N), each layer's activations added to ``features``."""
    for conv in convs[:-1]:
        h = F.leaky_relu(conv(h), 0.1)
        features.append(h)
    return convs[-1](h).flatten(1)


class PeriodCritic(nn.Module):
    """One sub-critic per period p: the signal, reflect-padded to a multiple of p, folded to
    B×1×(L/p)×p; ``layers`` (5, 1) convolutions of stride (2, 1) and a (3, 1) one to a logit
    per remaining position."""

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        periods: list[int] = [2, 3, 5],  # noqa: B006
        width: int = 16,
        layers: int = 3,
    ):
        super().__init__()
        _check_signal_critic(resolution, num_classes, width, layers)
        self.periods = _check_periods(periods, channels)
        body, head = ((5, 1), (2, 1), (2, 0)), ((3, 1), 1, (1, 0))
        self.nets = nn.ModuleList(
            _sub_critic(nn.Conv2d, layers, width, body, head) for _ in self.periods
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> CriticOutput:
        logits, features = [], []
        for period, convs in zip(self.periods, self.nets, strict=True):
            h = x.unsqueeze(1)
            pad = -x.shape[1] % period
            if pad:
                h = F.pad(h, (0, pad), mode="reflect")
            logits.append(_run(convs, h.reshape(h.shape[0], 1, -1, period), features))
        return CriticOutput(logits=torch.cat(logits, 1), features=features)


class ScaleCritic(nn.Module):
    """One sub-critic per scale: the signal average-pooled ``i`` times by 2 (i = 0 ..
    ``scales`` - 1); ``layers`` 1-D convolutions (kernel 5, stride 2) and a kernel-3 one to a
    logit per remaining position."""

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        scales: int = 2,
        width: int = 16,
        layers: int = 3,
    ):
        super().__init__()
        _check_signal_critic(resolution, num_classes, width, layers)
        if not scales >= 1 or channels >> (scales - 1) < 4:
            raise ValueError(f"scales must be >= 1 and leave >= 4 samples, got {scales}")
        self.nets = nn.ModuleList(
            _sub_critic(nn.Conv1d, layers, width, (5, 2, 2), (3, 1, 1)) for _ in range(scales)
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> CriticOutput:
        logits, features = [], []
        h = x.unsqueeze(1)
        for scale, convs in enumerate(self.nets):
            if scale:
                h = F.avg_pool1d(h, 4, 2, 1)
            logits.append(_run(convs, h, features))
        return CriticOutput(logits=torch.cat(logits, 1), features=features)


@hookimpl
def ganforge_register_datasets(register):
    register("signals", signals_source)


@hookimpl
def ganforge_register_discriminators(register):
    register("signal_period", PeriodCritic)
    register("signal_scale", ScaleCritic)


@hookimpl
def ganforge_register_metrics(register):
    register("signals", SignalStats)
