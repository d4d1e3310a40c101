"""Pieces the built-in models share; not a plugin (a leading ``_`` means no entry point)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal, get_args

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganforge.components import CriticOutput

#: The layers whose weights spectral normalisation constrains (an embedding only exists in a
#: critic as its projection embedding, which Miyato & Koyama normalise too).
WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)
#: How a conditional critic reads labels: see :class:`CriticConditioning`.
Condition = Literal["projection", "auxiliary"]
CONDITIONS = get_args(Condition)


def check_resolution(model: str, resolution: int, supported: Collection[int]) -> None:
    """Raise ValueError (a recipe error for the core) for a resolution ``model`` cannot build."""
    if resolution not in supported:
        listed = ", ".join(map(str, sorted(supported)))
        raise ValueError(f"{model} supports resolutions {listed}, not {resolution}")


def spectral_norm_all(module: nn.Module) -> nn.Module:
    """Spectrally normalise every convolution, linear layer and embedding of ``module``, in place.

    Call it after initialising the weights: the parametrization keeps the initialised weight
    as ``parametrizations.weight.original`` and divides it by its power-iteration estimate of
    the largest singular value (one iteration per train-mode forward, as in Miyato et al.).
    """
    for layer in [m for m in module.modules() if isinstance(m, WEIGHT_LAYERS)]:
        spectral_norm(layer)
    return module


def dropout_layers(p: float) -> list[nn.Module]:
    """``[nn.Dropout(p)]``, or nothing for ``p = 0`` so a model without dropout is unchanged."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return [nn.Dropout(p)] if p > 0 else []


def require_labels(model: nn.Module, num_classes: int, y: torch.Tensor | None) -> None:
    """Raise ValueError when a model built for ``num_classes`` > 0 classes gets no labels."""
    if num_classes and y is None:
        raise ValueError(
            f"{type(model).__name__} was built for {num_classes} classes and needs labels y"
        )


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm with a scale and shift per class (de Vries et al. 2017; Miyato & Koyama 2018).

    Normalises like ``nn.BatchNorm2d(affine=False)``, then applies ``scale[y]·x̂ + shift[y]``,
    both looked up in an ``nn.Embedding``; they start at 1 and 0, as batch norm's do.
    """

    takes_labels = True

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.scale = nn.Embedding(num_classes, num_features)
        self.shift = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        require_labels(self, self.num_classes, y)
        scale, shift = self.scale(y)[:, :, None, None], self.shift(y)[:, :, None, None]
        return self.bn(x) * scale + shift


def batch_norm(num_features: int, num_classes: int) -> nn.Module:
    """``nn.BatchNorm2d``, or its class-conditional form when ``num_classes`` > 0."""
    if num_classes:
        return ConditionalBatchNorm2d(num_features, num_classes)
    return nn.BatchNorm2d(num_features)


class ConditionalSequential(nn.Sequential):
    """``nn.Sequential`` that also hands the labels ``y`` to the layers that declare
    ``takes_labels = True`` (conditional batch norm, blocks built of it).

    Its parameters are named as ``nn.Sequential``'s, so an unconditional model built of it
    has the same state dict as one built of ``nn.Sequential``.
    """

    takes_labels = True

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, y) if getattr(layer, "takes_labels", False) else layer(x)
        return x


#: The largest layer size a built-in model takes: beyond it a model would exhaust memory
#: while being built rather than train.
MAX_SIZE = 1 << 16


def check_sizes(**sizes: int) -> None:
    """Raise ValueError (a recipe error for the core) unless every layer size is from 1 to
    MAX_SIZE."""
    bad = [f"{name} = {value}" for name, value in sizes.items() if not 1 <= value <= MAX_SIZE]
    if bad:
        raise ValueError(f"{', '.join(bad)}: must be from 1 to {MAX_SIZE:,}")


def check_condition(condition: str) -> None:
    """Raise ValueError (a recipe error for the core) for an unknown ``condition``."""
    if condition not in CONDITIONS:
        choices = " or ".join(map(repr, CONDITIONS))
        raise ValueError(f"condition must be {choices}, not {condition!r}")


class CriticConditioning(nn.Module):
    """The label-reading part of a conditional critic, on its penultimate features ``h``.

    ``"projection"`` (Miyato & Koyama 2018, "cGANs with projection discriminator"): adds
    ``embed(y)·pool(h)`` to the logit, ``pool`` summing over positions. ``"auxiliary"``
    (ACGAN, Odena et al. 2017): a linear classifier on ``pool(h)`` returns ``class_logits``
    for a classification loss such as ``acgan``, and the logit ignores the labels.
    Weights are Glorot-uniform (SNGAN's reference) or, given ``init_std``, N(0, init_std).
    """

    def __init__(
        self,
        condition: Condition,
        num_features: int,
        num_classes: int,
        init_std: float | None = None,
    ):
        super().__init__()
        check_condition(condition)
        self.condition, self.num_classes = condition, num_classes
        if condition == "projection":
            self.embed = nn.Embedding(num_classes, num_features)
            weight = self.embed.weight
        else:
            self.classify = nn.Linear(num_features, num_classes)
            weight = self.classify.weight
            nn.init.zeros_(self.classify.bias)
        if init_std is None:
            nn.init.xavier_uniform_(weight)
        else:
            nn.init.normal_(weight, 0.0, init_std)

    def forward(
        self, out: CriticOutput, features: torch.Tensor, y: torch.Tensor | None
    ) -> CriticOutput:
        """Add the label terms to ``out`` from ``features``, ``(B, C)`` or ``(B, C, H, W)``."""
        pooled = features.sum(dim=(2, 3)) if features.dim() == 4 else features
        if self.condition == "auxiliary":
            return out._replace(class_logits=self.classify(pooled))
        require_labels(self, self.num_classes, y)
        projection = (self.embed(y) * pooled).sum(dim=1, keepdim=True)
        return out._replace(logits=out.logits + projection)


def critic_output(
    features: torch.Tensor,
    head: nn.Module,
    conditioning: CriticConditioning | None = None,
    y: torch.Tensor | None = None,
) -> CriticOutput:
    """The head's logits, with the features it read (flattened per sample) for feature terms,
    and the label terms of ``conditioning`` for a conditional critic."""
    out = CriticOutput(logits=head(features).flatten(1), features=features.flatten(1))
    return out if conditioning is None else conditioning(out, features, y)
