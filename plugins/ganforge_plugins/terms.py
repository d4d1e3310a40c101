"""G-phase terms beside the adversarial one: a pixel reconstruction term and a perceptual
term over a frozen feature extractor (for generators that take an input), and feature
matching over the critics' features.

All are regularizers of the G phase (``[regularizers.reconstruction]``,
``[regularizers.perceptual]``, ``[regularizers.feature_matching]``) with a ``weight`` (which
may follow a schedule), and the core's ``every`` and ``start``. The first two compare G's
output with its target: the real image its input was derived from (``[input]``), so they
need one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganforge import hookimpl
from ganforge.components import feature_list


def _non_negative(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class Reconstruction:
    """``weight`` × the mean absolute (``norm = "l1"``) or squared (``"l2"``) difference
    between G's output and its target."""

    phase = "g"
    needs_input = True

    def __init__(self, *, weight: float = 1.0, norm: str = "l1"):
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
        self.weight, self.norm = _non_negative("weight", weight), norm

    def __call__(self, ctx):
        difference = ctx.fake.float() - ctx.real.float()
        distance = difference.abs().mean() if self.norm == "l1" else difference.square().mean()
        return self.weight * distance, {"distance": distance.detach()}


class Perceptual:
    """``weight`` × an LPIPS-style distance between G's output and its target in the feature
    maps of a frozen, registered feature extractor (``extractor``: ``"digits"``,
    ``"fashion_mnist"``, or any other; its options in ``extractor_options``).

    Each of the extractor's ReLU maps (and its final features) is normalised to unit length
    over the channels at every position; the distance is the mean squared difference, summed
    over the layers with equal weights (LPIPS without its learned per-channel weights, which
    would need a download). The extractor is built when the run is (a classifier trained at
    first use is trained then, once), stays in eval mode, takes no optimizer step and is not
    part of checkpoints: gradients flow through it to G only.
    """

    phase = "g"
    needs_input = True

    def __init__(
        self,
        *,
        extractor: str = "fashion_mnist",
        weight: float = 1.0,
        extractor_options: dict | None = None,
    ):
        from ganforge.evaluation import build
        from ganforge.plugins import Plugins

        self.weight = _non_negative("weight", weight)
        net = build(
            Plugins().registry,
            "feature_extractor",
            extractor,
            dict(extractor_options or {}),
            "regularizers.perceptual.extractor",
        )
        if not isinstance(net, nn.Module):
            raise ValueError(f"feature extractor {extractor!r} is not a torch module")
        self._net = [net.eval().requires_grad_(False)]  # a list: not an attribute module
        self._maps: list[torch.Tensor] = []
        self._layers = [m for m in net.modules() if isinstance(m, nn.ReLU)]
        for layer in self._layers:
            layer.register_forward_hook(lambda _m, _i, out: self._maps.append(out))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The extractor's normalised maps of ``x`` (with gradient into ``x``)."""
        net = self._net[0]
        weights = next(iter(net.parameters()), None)
        if weights is not None and weights.device != x.device:
            net.to(x.device)
        self._maps = []
        final, _ = net(x)
        maps = [m for m in self._maps if m.dim() == 4] + [final.float()]
        return [m / (m.float().norm(dim=1, keepdim=True) + 1e-10) for m in maps]

    def __call__(self, ctx):
        fake = self.features(ctx.fake)
        with torch.no_grad():
            real = self.features(ctx.real)
        pairs = zip(fake, real, strict=True)
        distance = sum(F.mse_loss(f.float(), r.float()) * f.shape[1] for f, r in pairs)
        return self.weight * distance, {"distance": distance.detach()}


class FeatureMatching:
    """``weight`` × the mean absolute difference between the critics' intermediate features
    of G's output and of the real samples, summed over every layer of every critic that
    returns ``CriticOutput.features`` (pix2pixHD, MelGAN, HiFi-GAN).

    The fakes' features are those of the step's adversarial pass (with a graph into G
    through the frozen critics); the reals' are taken without gradient: they are the target.
    Before ``[loss] critic_start`` the critics are called for it. Needs no ``[input]``.
    """

    phase = "g"

    def __init__(self, *, weight: float = 1.0):
        self.weight = _non_negative("weight", weight)

    def __call__(self, ctx):
        fakes = ctx.outputs.get("fake") or ctx.critics(ctx.fake, ctx.y_fake)
        reals = ctx.outputs.get("real")
        if reals is None:
            with torch.no_grad():
                reals = ctx.critics(ctx.real, ctx.y_real)
        distance, layers = 0.0, 0
        for fake, real in zip(fakes, reals, strict=True):
            for f, r in zip(feature_list(fake), feature_list(real), strict=True):
                distance = distance + (f.float() - r.detach().float()).abs().mean()
                layers += 1
        if not layers:
            from ganforge.errors import PluginError

            raise PluginError(
                "regularizers.feature_matching: no critic returns features "
                "(CriticOutput.features): use critics that do, or remove the term"
            )
        return self.weight * distance, {"distance": distance.detach()}


@hookimpl
def ganforge_register_regularizers(register):
    register("reconstruction", Reconstruction)
    register("perceptual", Perceptual)
    register("feature_matching", FeatureMatching)
