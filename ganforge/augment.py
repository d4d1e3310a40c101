"""Augmentation of everything the critic sees, with a fixed or an adaptive probability.

A recipe's ``[augment]`` table names a registered augmentation
(``ganforge_register_augmentations``):
a callable ``augment(x, p) -> x'`` that transforms a batch of images differentiably, applying
each of its transforms to each image with probability ``p`` (a 0-d tensor on the images'
device). The core's ``critic(x, y)`` applies it to every image D sees, real and fake, in every
phase, so G learns through the augmentation and never sees it in its own samples (Zhao et al.
2020, Karras et al. 2020).

With ``adaptive = true`` the core adjusts ``p`` as ADA does: it accumulates the sign of D's
logits on the reals it trains on, and every ``interval`` steps moves ``p`` up when that mean
(r_t) is above ``target`` (D is overfitting) and down when below, by ``interval × batch /
speed_images`` (so ``p`` can cross [0, 1] in ``speed_images`` real images). Everything stays on
the device: no host synchronisation in the step. ``p`` and the partial accumulators are part
of the training state, so a resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Augmentation(Protocol):
    """``augment(x, p)``: images B×C×H×W in [-1, 1] to augmented images, differentiably.

    Each transform applies to each image with probability ``p`` (a 0-d float tensor on ``x``'s
    device), drawing its randomness from the global torch RNG of that device (which
    checkpoints save and restore per process).
    """

    def __call__(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor: ...


class Augmenter:
    """The recipe's augmentation with its probability, fixed or adapted as in ADA."""

    STATE = ("p", "signs", "count", "r_t")

    def __init__(
        self,
        augment: Augmentation,
        *,
        p: float,
        adaptive: bool,
        target: float,
        interval: int,
        speed_images: int,
        batch_size: int,
        device: torch.device,
    ):
        self.augment, self.adaptive = augment, adaptive
        self.target, self.interval = target, interval
        self.step_size = interval * batch_size / speed_images
        self.p = torch.tensor(float(p), device=device)
        # Sum of sign(D(real)) and the number of logits summed, since the last adjustment.
        self.signs = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.r_t = torch.zeros((), device=device)  # the last adjustment's r_t, for the log

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.augment(x, self.p)

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate the overfitting heuristic from D's logits on the reals of one update."""
        if self.adaptive:
            self.signs += torch.sign(real_logits.detach().float()).sum()
            self.count += real_logits.numel()

    def adjust(self, step: int) -> None:
        """After step ``step`` (0-based) ends: every ``interval`` steps, move ``p`` toward the
        value that holds r_t at ``target`` (all ranks' logits, so every rank keeps the same p)."""
        if not self.adaptive or (step + 1) % self.interval:
            return
        totals = torch.stack([self.signs, self.count])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        self.r_t.copy_(totals[0] / totals[1].clamp(min=1))
        self.p.copy_((self.p + torch.sign(self.r_t - self.target) * self.step_size).clamp(0, 1))
        self.signs.zero_()
        self.count.zero_()

    def logs(self) -> dict[str, torch.Tensor]:
        """Device values for the periodic log: ``p`` (and the last r_t, when adaptive)."""
        return {"augment/p": self.p, **({"augment/r_t": self.r_t} if self.adaptive else {})}

    def state_dict(self) -> dict[str, float]:
        """JSON-ready state: float32 values survive the round trip through a Python float."""
        return {name: getattr(self, name).item() for name in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.STATE:
            getattr(self, name).fill_(float(state[name]))
