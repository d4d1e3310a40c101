"""What components look like to the core: the critic output, losses, regularizers, latents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn


class CriticOutput(NamedTuple):
    """What ``critic(x, y)`` returns: logits ``(B,)`` (or ``(B, N)``: one per patch, period
    or position) plus optional extras.

    ``class_logits`` (B×num_classes) serve auxiliary-classifier losses; ``features``, a list
    of the critic's intermediate activations (per layer, any shapes, the penultimate last),
    serve feature matching (pix2pixHD, MelGAN, HiFi-GAN) and consistency terms. A single
    tensor is taken as a list of one: read them with :func:`feature_list`.

    A named tuple, so that every backend sees the tensors a discriminator returns: DeepSpeed
    ZeRO-3 and FSDP2 hook a module's backward on its output tensors, found in tuples and
    dicts but not inside other objects. Change a field with ``out._replace(logits=...)``.
    """

    logits: torch.Tensor
    class_logits: torch.Tensor | None = None
    features: list[torch.Tensor] | None = None


def as_critic_output(out: torch.Tensor | CriticOutput) -> CriticOutput:
    """Normalise a discriminator's return value to a CriticOutput with ``(B,)`` logits."""
    if not isinstance(out, CriticOutput):
        out = CriticOutput(logits=out)
    if out.logits.dim() > 1:
        out = out._replace(logits=out.logits.reshape(out.logits.shape[0], -1).squeeze(1))
    return out


def feature_list(out: CriticOutput) -> list[torch.Tensor]:
    """A critic output's per-layer features as a list (a lone tensor is a list of one; none:
    empty). Read where features are used, so the step never rebuilds an output for them."""
    if out.features is None:
        return []
    return [out.features] if isinstance(out.features, torch.Tensor) else list(out.features)


class Critic(Protocol):
    """``critic(x, y, float32=False)``: D with labels and augmentation applied by the core.

    ``float32=True`` runs D with autocast off on float32 inputs: use it for penalties on input
    gradients (gradient penalty, R1, R2).
    """

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor | None, *, float32: bool = False
    ) -> CriticOutput: ...


@runtime_checkable
class Loss(Protocol):
    """An adversarial loss: pure functions of critic outputs and labels."""

    needs_real_for_g: bool

    def d_loss(
        self,
        real: CriticOutput,
        fake: CriticOutput,
        y_real: torch.Tensor | None,
        y_fake: torch.Tensor | None,
    ) -> torch.Tensor: ...

    def g_loss(
        self,
        fake: CriticOutput,
        real: CriticOutput | None,
        y_real: torch.Tensor | None,
        y_fake: torch.Tensor | None,
    ) -> torch.Tensor: ...


class CriticPass(NamedTuple):
    """One of the D phase's adversarial critic passes, run on ``x`` (float32, requiring grad,
    before augmentation) with autocast off: a penalty on input gradients differentiates
    ``out.logits`` with respect to ``x`` instead of calling the critic again."""

    x: torch.Tensor
    out: CriticOutput


@dataclass
class RegularizerContext:
    """Everything a regularizer may need, for one phase of one step.

    ``generator`` is G as the step calls it (inside any distributed wrapper: call it, rather
    than its submodules, so its gradients are synchronised); ``fake`` was generated from ``z``
    and ``y_fake`` (with a graph into G in the G phase).

    ``passes`` holds the D phase's adversarial critic passes (``"real"``, ``"fake"``) that a
    due regularizer named in its ``reuses`` attribute, run for it on inputs requiring grad in
    float32 (also under mixed precision); empty in the G phase.

    ``source`` is G's input for this batch when the recipe has an ``[input]`` (``fake`` was
    generated from it, ``real`` is its target), else None; ``critic`` is then already
    conditioned on it where the discriminator takes it.

    With several critics (``[critics.NAME]``), ``critic`` is the one this regularizer belongs
    to (a critic's own regularizers get that critic, ``[regularizers]`` the
    ``[discriminator]``), and ``passes`` are its passes. ``critics(x, y)`` gives every
    critic's output as a list (one entry with one critic), and ``outputs`` the G phase's
    adversarial passes of every critic: ``outputs["fake"]`` (with a graph into G) and, when a
    loss needs them, ``outputs["real"]`` (empty in the D phase and before ``critic_start``).
    """

    phase: str
    step: int
    generator: nn.Module
    critic: Critic
    real: torch.Tensor
    fake: torch.Tensor
    z: torch.Tensor
    y_real: torch.Tensor | None
    y_fake: torch.Tensor | None
    passes: dict[str, CriticPass] = field(default_factory=dict)
    source: torch.Tensor | None = None
    critics: Callable[..., list[CriticOutput]] | None = None
    outputs: dict[str, list[CriticOutput]] = field(default_factory=dict)
    _gradients: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self):
        # Only the passes run for reuse (inputs requiring grad) are a penalty's to differentiate.
        self.passes = {k: p for k, p in self.passes.items() if p.x.requires_grad}

    def input_gradient(self, which: str) -> torch.Tensor:
        """``∇ₓ Σ D(x)`` of the adversarial pass ``which`` in :attr:`passes`, with its graph
        (``create_graph``) so a penalty built on it trains D.

        The first call takes the gradients of every pass in :attr:`passes` in one autograd
        call (R1's and R2's together); later calls read them.
        """
        if self._gradients is None:
            names = list(self.passes)
            outputs = [self.passes[n].out.logits.sum() for n in names]
            inputs = [self.passes[n].x for n in names]
            grads = torch.autograd.grad(outputs, inputs, create_graph=True)
            self._gradients = dict(zip(names, grads, strict=True))
        return self._gradients[which]


@runtime_checkable
class Regularizer(Protocol):
    """A loss term for the D phase (``phase = "d"``) or the G phase (``"g"``).

    A D-phase penalty on the critic's input gradients may set ``reuses = ("real",)`` (or
    ``"fake"``): on the steps it is due the core runs that adversarial pass on inputs that
    require grad, and hands it over in ``ctx.passes``, saving the penalty's own critic call.

    One that keeps state across steps (a running mean) is an ``nn.Module`` holding it in
    buffers: the core moves it to the device and checkpoints, restores and synchronises them.
    """

    phase: str

    def __call__(self, ctx: RegularizerContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@runtime_checkable
class Input(Protocol):
    """What an input-taking generator is given for each sample (``[input]``), derived on the
    device from the training images: ``input(images) -> source`` on B×C×H×W in [-1, 1],
    without gradient, and ``shape(channels, resolution) -> (channels, resolution)`` of what
    it returns. Randomness (a random mask) comes from the device's global torch RNG."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def shape(self, channels: int, resolution: int) -> tuple[int, int]: ...


def latent_shape(generator: nn.Module) -> tuple[int, ...]:
    """The latent shape a generator declares (without the batch dimension)."""
    return tuple(generator.latent_shape)


def sample_latents(
    generator: nn.Module, n: int, rng: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Draw ``n`` latents from the generator's declared prior, from ``rng`` only, on ``rng``'s
    device, then moved to ``device``.

    Sample grids, evaluation and exports draw from CPU generators, so the same seed gives the
    same latents on every device. Training draws from a generator on the training device: no
    copy from host memory per step.
    """
    shape = (n, *latent_shape(generator))
    prior = getattr(generator, "latent_prior", "normal")
    if prior == "normal":
        z = torch.randn(shape, generator=rng, device=rng.device)
    elif prior == "uniform":
        z = torch.rand(shape, generator=rng, device=rng.device).mul_(2).sub_(1)
    else:
        raise ValueError(f"unknown latent prior {prior!r}")
    return z.to(device, non_blocking=True)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block (batch-norm statistics and spectral-norm vectors
    are read, not updated), then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def grid_labels(count: int, num_classes: int) -> torch.Tensor:
    """Labels for a sample grid of ``count``: a row (or run) of samples per class, in order."""
    per_class = max(count // num_classes, 1)
    return (torch.arange(count) // per_class).clamp_(max=num_classes - 1)
