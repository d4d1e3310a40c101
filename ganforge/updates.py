"""What each optimizer update needs beside backward: the optimizer, the gradient norm and the
device-side non-finite check (no host synchronisation in any of them), and the record of what
one phase of a step leaves for logging (:class:`Phase`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ganforge.components import CriticOutput
from ganforge.schedules import initial


@dataclass
class Phase:
    """Tensors one phase of a step leaves for logging; read on the host only every
    ``log_every`` steps."""

    loss: torch.Tensor
    grad_norm: torch.Tensor | None  # measured on logged steps (and always when clipping)
    skipped: torch.Tensor
    logs: dict[str, torch.Tensor]
    real: CriticOutput | None = None
    fake: CriticOutput | None = None


def build_optimizer(params, config: dict[str, Any]) -> torch.optim.Optimizer:
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config["name"]]
    # Fused Adam accepts a device-side `found_inf` flag, so a non-finite step is skipped
    # without the host reading anything back (no synchronisation inside the step). It steps
    # FSDP2's sharded parameters (DTensors) and ZeRO's flat partitions too.
    return kind(
        params,
        lr=initial(config["lr"]),  # a schedule sets both before every step
        betas=tuple(initial(config["betas"])),
        eps=config["eps"],
        weight_decay=config["weight_decay"],
        fused=True,
    )


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, in float32, as a device tensor (no host read).

    ``torch.nn.utils.get_total_norm`` without its grouping by device and dtype: a GAN's
    models each live on one device, and per step the grouping cost more than the norms on a
    launch-bound model.
    """
    if not grads:
        return torch.zeros(())
    if len({g.dtype for g in grads}) > 1:
        grads = [g.float() for g in grads]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)), dtype=torch.float32)


def non_finite(tensors: list[torch.Tensor], one: torch.Tensor) -> torch.Tensor:
    """1.0 if any element of ``tensors`` is infinite or NaN, else 0.0 (a 0-d device tensor).

    One fused kernel per dtype: the loss scaler's check, unscaling by exactly 1, which changes
    nothing.
    """
    found = torch.zeros((), dtype=torch.float32, device=one.device)  # what fused Adam reads
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for group in groups.values():
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)
    return found
