"""The generator's EMA and the EMA generator's standing batch-norm statistics.

The EMA's weight is a pure function of the step (its decay ramped up, or a half-life in
images; plus its own weights), so a resumed run recomputes it exactly and ``train.steps`` can
grow without changing its horizon. Standing statistics never touch training state: they are
computed for sampling and export, and the averaged module's own buffers are put back
afterwards. (Learning-rate decay, ``lr_factor``, lives with the other schedules in
``ganforge/schedules.py``.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import compress

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ganforge.components import eval_mode
from ganforge.schedules import lr_factor as lr_factor  # re-exported: its old home


class EMA:
    """An exponential moving average of a module's parameters and floating-point buffers.

    After update ``t`` (1-based) ``ema = β_t·ema + (1-β_t)·model`` with
    ``β_t = decay · min(1, t / warmup_steps)``: early on the average follows the model closely,
    so it is not dominated by the random initialisation. Given a half-life in images instead
    (StyleGAN's form), ``β_t = 0.5^(images a step / half-life)``, the half-life ramped up with
    the images seen. Integer buffers (batch-norm counters)
    are copied. The averaged module is what sampling and export use.

    The average is of the whole generator: where a backend shards it (ZeRO-3, FSDP2) the
    trainer hands :meth:`update` the gathered tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float,
        warmup_steps: int = 0,
        *,
        half_life_images: float = 0.0,
        rampup: float = 0.0,
        images_per_step: int = 0,
    ):
        self.decay, self.warmup_steps = decay, warmup_steps
        self.half_life, self.rampup = half_life_images, rampup
        self.images_per_step = images_per_step
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        tensors = list(self.module.state_dict(keep_vars=True).values())
        self._floating = [t.is_floating_point() for t in tensors]
        self._averaged = [t for t in tensors if t.is_floating_point()]
        self._copied = [t for t in tensors if not t.is_floating_point()]

    def beta(self, t: int) -> float:
        """β after update ``t``: ``decay`` (ramped over ``warmup_steps``), or StyleGAN's
        ``0.5^(images a step / half-life)`` with the half-life at most ``rampup`` × the images
        seen after ``t`` updates."""
        ramp = min(1.0, t / self.warmup_steps) if self.warmup_steps else 1.0
        if not self.half_life:
            return self.decay * ramp
        half_life = self.half_life
        if self.rampup:
            half_life = min(half_life, t * self.images_per_step * self.rampup)
        return 0.5 ** (self.images_per_step / max(half_life, 1e-8)) * ramp

    @torch.no_grad()
    def update(self, t: int, skip: torch.Tensor | None, current: Sequence[torch.Tensor]) -> None:
        """Average in the model's current weights as update ``t``.

        ``current`` holds the model's parameters and buffers in ``state_dict`` order.
        ``skip`` (a device tensor, 1 = skip) leaves the average unchanged without a host
        synchronisation: it is the same flag that skipped the optimizer step.
        """
        weight = 1.0 - self.beta(t)
        if skip is not None:
            weight = (1.0 - skip) * weight
        floating = compress(current, self._floating)
        others = compress(current, (not f for f in self._floating))
        for averaged, value in zip(self._averaged, floating, strict=True):
            averaged.lerp_(value.detach().to(averaged.dtype), weight)
        for copied, value in zip(self._copied, others, strict=True):
            copied.copy_(value)


#: Draws ``(z, y)`` for ``n`` samples from ``rng`` (``y`` None for unconditional generators).
Draw = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]]


@torch.no_grad()
def standing_statistics(generator: nn.Module, draw: Draw, batches: int, batch_size: int) -> None:
    """Re-estimate every batch-norm layer's running mean and variance for ``generator``'s
    weights as they are now: the plain average over ``batches`` forward passes of
    ``batch_size`` samples drawn by ``draw`` from a fixed seed (BigGAN's "standing
    statistics").

    An EMA generator needs this. Its averaged weights never ran a forward pass in training,
    and the running statistics it averaged belong to other weights; the mismatch grows with
    the EMA's horizon. Only the batch-norm layers run in train mode here; every other layer
    (spectral-norm power iterations included) stays in eval mode. The generator is left in
    eval mode with the new statistics.
    """
    layers = [m for m in generator.modules() if isinstance(m, _BatchNorm)]
    if not layers:
        return
    generator.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the passes
        layer.train()
    rng = torch.Generator().manual_seed(0x5747)
    for _ in range(batches):
        generator(*draw(batch_size, rng))
    generator.eval()


@contextmanager
def with_standing_statistics(
    generator: nn.Module, draw: Draw, batches: int, batch_size: int
) -> Iterator[nn.Module]:
    """``generator`` with :func:`standing_statistics` for the block, in eval mode; then its own
    batch-norm buffers, momentum and mode back (an EMA keeps averaging its own). ``batches``
    0: the generator as it is, in eval mode."""
    if not batches:
        with eval_mode(generator):
            yield generator
        return
    layers = [m for m in generator.modules() if isinstance(m, _BatchNorm)]
    saved = [
        (m.momentum, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in layers
    ]
    was_training = generator.training
    try:
        standing_statistics(generator, draw, batches, batch_size)
        yield generator
    finally:
        for layer, (momentum, buffers) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            for name, value in buffers.items():
                getattr(layer, name).copy_(value)
        generator.train(was_training)
