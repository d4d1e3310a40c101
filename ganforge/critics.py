"""Several critics trained together: multi-scale, multi-period or patch critics beside the
recipe's ``[discriminator]``, each with its own loss, weight, optimizer settings and D-phase
regularizers (``[critics.NAME]`` tables).

The critics form one module, :class:`CriticSet`, which every backend wraps, shards and
checkpoints as it does a single discriminator: one forward gives every critic's output, one
D update steps every critic (their optimizer settings are parameter groups of D's
optimizer, :func:`parameter_groups`). A run with one critic builds no set: its step, its
checkpoints and its numbers are those of a run before critics could be several.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ganforge.components import CriticOutput, Loss, as_critic_output
from ganforge.schedules import initial

#: The name the recipe's ``[discriminator]`` has among several critics (logs, checkpoints).
FIRST = "discriminator"


@dataclass
class CriticTerms:
    """How one critic's outputs enter the losses: D's loss and G's adversarial term each add
    ``weight`` × this critic's ``loss``."""

    name: str
    weight: float
    loss: Loss
    loss_name: str = ""  # its registry name, for messages


class CriticSet(nn.Module):
    """Several discriminators as one module: ``D(x, y, source=None)`` returns a tuple of
    every critic's :class:`~ganforge.components.CriticOutput`, in recipe order (the
    ``[discriminator]`` first). ``source``, G's input (``[input]``), is passed to the critics
    conditioned on it (``takes_input``) only."""

    def __init__(self, critics: dict[str, nn.Module]):
        super().__init__()
        self.members = nn.ModuleDict(critics)
        self._conditioned = [bool(getattr(m, "takes_input", False)) for m in critics.values()]
        self.takes_input = any(self._conditioned)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, source: torch.Tensor | None = None
    ) -> tuple[CriticOutput, ...]:
        return tuple(
            as_critic_output(critic(x, y, source=source) if conditioned else critic(x, y))
            for critic, conditioned in zip(self.members.values(), self._conditioned, strict=True)
        )


def parameter_groups(
    critics: CriticSet, base: dict[str, Any], overrides: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One optimizer parameter group per critic: ``[optim.discriminator]``'s settings,
    changed where the critic's ``optim`` table says (``overrides``, in critic order).

    A critic's own ``lr`` is kept as a ratio to the base lr (``lr_ratio``): a schedule or decay
    of ``optim.discriminator.lr`` moves every critic's lr alike. Its own ``betas`` are fixed
    (``own_betas``): a schedule of the base betas leaves them.
    """
    base_lr = initial(base["lr"])
    groups = []
    for critic, own in zip(critics.members.values(), overrides, strict=True):
        group: dict[str, Any] = {"params": [p for p in critic.parameters() if p.requires_grad]}
        if "lr" in own:
            group["lr"], group["lr_ratio"] = own["lr"], own["lr"] / base_lr
        if "betas" in own:
            group["betas"], group["own_betas"] = tuple(own["betas"]), True
        for key in ("eps", "weight_decay"):
            if key in own:
                group[key] = own[key]
        groups.append(group)
    return groups
