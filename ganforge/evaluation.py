"""Evaluation: samples → features (a feature-extractor plugin) → metrics (metric plugins).

The core owns what every metric needs: drawing real and generated samples reproducibly,
running the extractor in batches, caching real-data features per dataset and extractor,
gathering features from every process, and choosing defaults per kind of data. The numbers
themselves come from plugins (``ganforge_register_feature_extractors``,
``ganforge_register_metrics``); the built-ins are in ``ganforge_plugins.metrics``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ganforge.clusters import draw_inputs
from ganforge.data import DataSource, ImageData, cache_root, open_store, to_model_range
from ganforge.errors import GanforgeError, RecipeError
from ganforge.registry import Registry
from ganforge.runfiles import atomic_write


@dataclass
class Features:
    """What one side (real or generated) of an evaluation looks like to the metrics.

    ``features``: N×F float64; ``logits``: N×K float64 class logits (None without a classifier
    head); ``labels``: N class indices (real: the data's, generated: the conditioning labels;
    None when unlabelled); ``samples``: the N×D points themselves, for point data only.
    """

    features: torch.Tensor
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    samples: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("features", "logits", "labels", "samples")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class EvalContext:
    """What a metric may need to know besides the two feature sets."""

    num_classes: int = 0
    class_names: list[str] | None = None
    extractor_classes: int = 0
    data_metadata: dict = field(default_factory=dict)
    seed: int = 0


@runtime_checkable
class FeatureExtractor(Protocol):
    fingerprint: str
    num_classes: int

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@runtime_checkable
class Metric(Protocol):
    def __call__(self, real: Features, fake: Features, context: EvalContext) -> dict: ...


class EvalError(GanforgeError):
    """An evaluation that cannot run as asked (metric, extractor, data)."""


# --------------------------------------------------------------------------- choosing


def default_extractor(data: ImageData, metadata: dict) -> str:
    """A data source may name its extractor (the digits name theirs); else by kind of data."""
    return metadata.get("eval_extractor") or ("inception" if data.is_image else "identity")


def default_metrics(
    extractor_classes: int, data_classes: int, conditional: bool, metadata: dict
) -> list[str]:
    names = ["fd", "kid", "pr"]
    if extractor_classes:
        names.append("is")
    if conditional:
        names.append("intra_fd")
        if extractor_classes == data_classes:  # a classifier of the data's own classes
            names.append("accuracy")
    return names + [m for m in metadata.get("eval_metrics", []) if m not in names]


def build(registry: Registry, kind: str, name: str, kwargs: dict[str, Any], where: str):
    """``registry.build`` for an extractor or metric, whose weights are never initialised from
    the training's random streams."""
    with torch.random.fork_rng(devices=[]):
        return registry.build(kind, name, {}, kwargs, where=where)


# --------------------------------------------------------------------------- features


@torch.no_grad()
def extract(extractor, batches, device: torch.device, keep_samples: bool = False) -> Features:
    """Run ``extractor`` over ``(x, y)`` batches; everything comes back float64 on the CPU."""
    features, logits, labels, samples = [], [], [], []
    for x, y in batches:
        f, k = extractor(x.to(device))
        features.append(f.double().cpu())
        if k is not None:
            logits.append(k.double().cpu())
        if y is not None:
            labels.append(y.cpu())
        if keep_samples:
            samples.append(x.float().cpu())
    return Features(
        torch.cat(features),
        torch.cat(logits) if logits else None,
        torch.cat(labels) if labels else None,
        torch.cat(samples) if samples else None,
    )


def real_batches(data: ImageData, indices: np.ndarray, batch: int):
    """Real samples in [-1, 1] (points as they are) with their labels, in batches."""
    for start in range(0, len(indices), batch):
        idx = np.sort(indices[start : start + batch])
        x = torch.from_numpy(np.asarray(data.targets().images[idx]))  # paired: the targets
        x = to_model_range(x)
        y = torch.from_numpy(np.asarray(data.labels[idx])) if data.labels is not None else None
        yield x, y


def real_split(n_data: int, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of the data: up to ``num`` reference samples and up to ``num`` held out
    (the held-out half scores the real data itself: the ceiling a generator can reach)."""
    order = np.random.default_rng(seed).permutation(n_data)
    size = min(num, n_data // 2) if n_data < 2 * num else num
    return order[:size], order[size : 2 * size]


def cached_real_features(
    key_parts: list[str], compute: Callable[[], Features], cache: bool = True
) -> Features:
    """Real-data features, cached under ``$GANFORGE_CACHE_DIR/eval`` (safetensors, no pickle)."""
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:24]
    path = cache_root() / "eval" / f"{key}.safetensors"
    if cache and path.exists():
        try:
            return Features(**load_file(str(path)))
        except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed, not trusted
            path.unlink(missing_ok=True)
    features = compute()
    if cache:
        tensors = {k: v.contiguous() for k, v in features.tensors().items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    return features


# --------------------------------------------------------------------------- evaluating


@dataclass
class Evaluation:
    """A configured evaluation: one extractor, several metrics, real-data features ready."""

    extractor: Any
    metrics: dict[str, Any]
    real: Features
    held_out: Features | None
    context: EvalContext
    device: torch.device
    ceiling: dict[str, float] | None = None  # the metrics of the held-out real data
    ceiling_source: str = "held out"  # or "train split" (``prepare``'s ``train``)

    def score(self, fake: Features) -> dict[str, float]:
        """Every metric of ``fake`` against the real features, as ``name`` or ``name/part``.

        Non-finite features (a diverged generator) score NaN instead of stopping the run.
        """
        out: dict[str, float] = {}
        if not torch.isfinite(fake.features).all():
            return {name: float("nan") for name in self.metrics}
        for name, metric in self.metrics.items():
            for part, value in metric(self.real, fake, self.context).items():
                out[f"{name}/{part}" if part else name] = float(value)
        return out

    def legend(self) -> dict[str, str]:
        """What each score is and which way is better, where its metric says (``legend``)."""
        out = {}
        for name, metric in self.metrics.items():
            for part, text in (getattr(metric, "legend", None) or {}).items():
                out[f"{name}/{part}" if part else name] = str(text)
        return out

    def features_of(self, batches, keep_samples: bool) -> Features:
        return extract(self.extractor, batches, self.device, keep_samples)


def prepare(
    registry: Registry,
    data: ImageData,
    data_fingerprint: str,
    data_metadata: dict,
    *,
    num: int,
    extractor: str | None = None,
    extractor_options: dict | None = None,
    metrics: dict[str, dict] | None = None,
    conditional: bool = False,
    device: torch.device | str = "cpu",
    seed: int = 0,
    cache: bool = True,
    with_real: bool = True,
    train: DataSource | None = None,
) -> Evaluation:
    """Build the extractor and metrics and compute (or load) the real-data features.

    ``with_real=False`` skips the real features (processes that only contribute samples).
    ``train``: where ``data`` is a data set's held-out split, the source of its training
    split. When the held-out split cannot give ``num`` reference images and ``num`` others,
    all of it (up to ``num``) is the reference and ``num`` seeded training images (opened only
    then) are the ceiling: FD against a whole test split, as FID-10k is measured."""
    # Over 60 lines on purpose: one procedure whose steps all feed the cache key below.
    device = torch.device(device)
    for name in metrics or {}:  # cheap checks before the extractor (which may load weights)
        if registry.find("metric", name) is None:
            raise RecipeError([(f"eval.metrics.{name}", registry.unknown_message("metric", name))])
    extractor_name = extractor or default_extractor(data, data_metadata)
    options = dict(extractor_options or {})
    if extractor_name == data_metadata.get("eval_extractor"):  # the source's own: its options
        options = {**data_metadata.get("eval_extractor_options", {}), **options}
    net = _extractor(registry, extractor_name, options, device)
    classes = int(getattr(net, "num_classes", 0))
    context = EvalContext(
        num_classes=data.num_classes if conditional else 0,
        class_names=list(data.class_names) if data.class_names else None,
        extractor_classes=classes,
        data_metadata=dict(data_metadata),
        seed=seed,
    )
    defaults = default_metrics(classes, data.num_classes, conditional, data_metadata)
    chosen = metrics or {m: {} for m in defaults}
    built = {
        name: build(registry, "metric", name, kwargs, f"eval.metrics.{name}")
        for name, kwargs in chosen.items()
    }
    whole = train is not None and len(data) < 2 * num
    if whole:
        reference = np.random.default_rng(seed).permutation(len(data))[:num]
        evaluation_key = ["whole", train.fingerprint]  # the ceiling from another split
    else:
        (reference, held), held_data, evaluation_key = real_split(len(data), num, seed), data, []
    points = not data.is_image
    evaluation = Evaluation(net, built, None, None, context, device)  # type: ignore[arg-type]
    # The procedure (split, preprocessing), the data, the extractor and the split's settings.
    key = ["eval-v1", data_fingerprint, extractor_name, repr(sorted(options.items()))]
    key += [net.fingerprint, str(len(data)), str(num), str(seed), *evaluation_key]

    if not with_real:
        return evaluation

    def compute(images, indices):
        return lambda: evaluation.features_of(real_batches(images, indices, 250), points)

    evaluation.real = cached_real_features([*key, "reference"], compute(data, reference), cache)
    if whole:
        held_data = open_store(train, data.resolution)
        held = np.random.default_rng(seed).choice(len(held_data), min(num, len(held_data)), False)
    if len(held) >= 2:
        held_out = compute(held_data, held)
        evaluation.held_out = cached_real_features([*key, "held-out"], held_out, cache)
        evaluation.ceiling_source = "train split" if whole else "held out"
        # Scoring the real data first also finds a metric that cannot run on these features
        # (say `is` without class logits) before any training.
        evaluation.ceiling = evaluation.score(evaluation.held_out)
    return evaluation


def _extractor(registry: Registry, name: str, options: dict, device: torch.device):
    net = build(registry, "feature_extractor", name, options, "eval.extractor")
    if not isinstance(net, FeatureExtractor):
        raise EvalError(f"feature extractor {name!r} does not follow the protocol")
    return net.eval().to(device) if isinstance(net, torch.nn.Module) else net


def generated_batches(
    generate: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    latents: Callable[[int, torch.Generator], torch.Tensor],
    num: int,
    num_classes: int,
    seed: int,
    batch: int = 250,
    prior: list[float] | None = None,
):
    """``num`` generated samples in batches, from their own seeded streams (no training RNG).

    Conditional generators get labels drawn uniformly over the classes, or with ``prior``
    (a self-conditioned generator's clusters, with their share of the data).
    """
    rng = torch.Generator().manual_seed(seed + 12345)
    for start in range(0, num, batch):
        n = min(batch, num - start)
        z, y = draw_inputs(n, num_classes, prior, latents, rng)
        x = generate(z, y)
        if x.dim() == 4:  # images are scored as saved: clamped and on the 8-bit grid of the data
            x = x.float().clamp(-1, 1).add(1).mul(127.5).round().div(127.5).sub(1)
        # Clusters are not the data's classes: label metrics (intra_fd) must not pair them.
        yield x, (y if prior is None else None)


def gather(features: Features, accelerator, num: int) -> Features:
    """Every process's generated features, concatenated (rank order), cut to ``num``."""
    if accelerator.num_processes == 1:
        return features
    gathered = {
        name: accelerator.gather(value.to(accelerator.device)).cpu()[:num]
        for name, value in features.tensors().items()
    }
    return Features(**gathered)


def table(results: dict[str, dict[str, float]], legend: dict[str, str] | None = None) -> str:
    """Metric values side by side, one column per evaluated set, then what each one is."""
    names = sorted({k for values in results.values() for k in values})
    columns = list(results)
    width = max([len(n) for n in names] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{c:>16}" for c in columns)]
    for name in names:
        cells = [results[c].get(name) for c in columns]
        lines.append(
            f"{name:<{width}}  "
            + "  ".join(f"{v:>16.5g}" if v is not None else f"{'-':>16}" for v in cells)
        )
    explained = [name for name in names if (legend or {}).get(name)]
    if explained:
        lines.append("")
        lines += [f"{name:<{width}}  {legend[name]}" for name in explained]
    return "\n".join(lines)
