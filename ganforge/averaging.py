"""Schedules that follow the step count: learning-rate decay and the generator's EMA.

Both are pure functions of the step (plus, for the EMA, its own weights), so a resumed run
recomputes them exactly and ``train.steps`` can grow without changing their horizon.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def lr_factor(step: int, config: dict) -> float:
    """The multiplier on ``lr`` at ``step`` (0-based G update index).

    ``lr_decay = "linear"``: 1 until ``lr_decay_start``, then linearly to 0 at
    ``lr_decay_steps`` (SNGAN / WGAN-GP decay over their own horizon, not ``train.steps``).
    """
    if config["lr_decay"] == "none":
        return 1.0
    start, end = config["lr_decay_start"], config["lr_decay_steps"]
    return min(1.0, max(0.0, 1.0 - (step - start) / (end - start)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """An exponential moving average of a module's parameters and floating-point buffers.

    After update ``t`` (1-based) ``ema = β_t·ema + (1-β_t)·model`` with
    ``β_t = decay · min(1, t / warmup_steps)``: early on the average follows the model closely,
    so it is not dominated by the random initialisation. Integer buffers (batch-norm counters)
    are copied. The averaged module is what sampling and export use.
    """

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = 0):
        self.decay, self.warmup_steps = decay, warmup_steps
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(
            zip(
                self.module.state_dict(keep_vars=True).values(),
                model.state_dict(keep_vars=True).values(),
                strict=True,
            )
        )
        self._averaged = [(e, m) for e, m in pairs if e.is_floating_point()]
        self._copied = [(e, m) for e, m in pairs if not e.is_floating_point()]

    def beta(self, t: int) -> float:
        ramp = min(1.0, t / self.warmup_steps) if self.warmup_steps else 1.0
        return self.decay * ramp

    @torch.no_grad()
    def update(self, t: int, skip: torch.Tensor | None = None) -> None:
        """Average in the model's current weights as update ``t``.

        ``skip`` (a device tensor, 1 = skip) leaves the average unchanged without a host
        synchronisation: it is the same flag that skipped the optimizer step.
        """
        weight = 1.0 - self.beta(t)
        if skip is not None:
            weight = (1.0 - skip) * weight
        for averaged, current in self._averaged:
            averaged.lerp_(current.detach().to(averaged.dtype), weight)
        for copied, current in self._copied:
            copied.copy_(current)
