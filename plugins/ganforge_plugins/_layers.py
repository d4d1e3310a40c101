"""Pieces the built-in models share; not a plugin (a leading ``_`` means no entry point)."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganforge.components import CriticOutput

#: The layers whose weights spectral normalisation constrains.
WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def check_resolution(model: str, resolution: int, supported: Collection[int]) -> None:
    """Raise ValueError (a recipe error for the core) for a resolution ``model`` cannot build."""
    if resolution not in supported:
        listed = ", ".join(map(str, sorted(supported)))
        raise ValueError(f"{model} supports resolutions {listed}, not {resolution}")


def spectral_norm_all(module: nn.Module) -> nn.Module:
    """Spectrally normalise every convolution and linear layer of ``module``, in place.

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


def critic_output(features: torch.Tensor, head: nn.Module) -> CriticOutput:
    """The head's logits, with the features it read (flattened per sample) for feature terms."""
    return CriticOutput(logits=head(features).flatten(1), features=features.flatten(1))
