"""One process, or DistributedDataParallel through Accelerate: the default execution."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ganforge.execution import Execution
from ganforge.updates import non_finite, total_norm


class DDPExecution(Execution):
    """G, D and both optimizers through ``accelerator.prepare``; the update done by hand (what
    ``accelerator.backward`` and the wrapped optimizer do, without their per-call overhead)."""

    name = "ddp"

    def prepare(self, generator, discriminator, make_optimizer):
        opt_g = make_optimizer("generator", generator.parameters())
        opt_d = make_optimizer("discriminator", discriminator.parameters())
        G, D, opt_g, opt_d = self.acc.prepare(generator, discriminator, opt_g, opt_d)
        self.wrapped = {"generator": G, "discriminator": D}
        self.modules = {"generator": generator, "discriminator": discriminator}
        self.optimizers = {"generator": opt_g, "discriminator": opt_d}
        # Each optimizer's parameters, listed once (no traversal per step).
        self._params = {
            role: [p for group in opt.optimizer.param_groups for p in group["params"]]
            for role, opt in self.optimizers.items()
        }
        # Accelerate's no_sync asks its state whether the launch is distributed at every call
        # (~40 µs on a CPU); one process needs no context at all.
        self._distributed = self.acc.num_processes > 1
        return G, D

    def no_sync(self, role: str):
        if not self._distributed:
            return contextlib.nullcontext()
        return self.acc.no_sync(self.wrapped[role])

    def update(self, role, loss, measure):
        # The optimizer inside Accelerate's wrapper, used as the wrapper would (stepped through
        # the loss scaler under fp16). The wrapper's zero_grad inspects a signature and its
        # step looks for optional packages on the file system at every call: with 2 updates a
        # step that was ~30% of a tiny model's step on a CPU (benchmarks/engine_overhead.py).
        inner = self.optimizers[role].optimizer
        params = self._params[role]
        for p in params:  # zero_grad(set_to_none=True) without its per-call bookkeeping
            p.grad = None
        scaler = self.acc.scaler
        # What accelerator.backward does for the launches this execution serves (no gradient
        # accumulation), minus its loss / 1.
        (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is not None:  # fp16: measure and clip true gradients
            scaler.unscale_(inner)  # what accelerator.unscale_gradients does under fp16
        grads = [p.grad for p in params if p.grad is not None]
        # One fused check of every gradient element and the loss, whether or not the step
        # logs: the norm (logged steps, clipping) may overflow where no element does.
        found_inf = non_finite([*grads, loss.detach()], self._one)
        norm = total_norm(grads) if measure or self.grad_clip > 0 else None
        if self.grad_clip > 0:  # clipping by an infinite norm would zero or NaN the update
            found_inf = torch.maximum(found_inf, (~torch.isfinite(norm)).float())
        if self._distributed:
            torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(
                [p for p in params if p.grad is not None], self.grad_clip, norm
            )
        if scaler is not None:
            # GradScaler steps a fused optimizer on its own flag (this rank's gradients only)
            # and overwrites the optimizer's: fold the core's in (the loss, every rank), so
            # the optimizer, the EMA and the skip counters skip together.
            state = scaler._per_optimizer_states[id(inner)]
            for flag in state["found_inf_per_device"].values():
                torch.maximum(flag, found_inf.to(flag.device), out=flag)
            scaler.step(inner)
            scaler.update()
        else:
            inner.found_inf = found_inf  # read by the fused step: skip when 1
            inner.step()
        return norm, found_inf

    def load_optimizer_state(self, role: str, state: dict[str, Any]) -> None:
        optimizer = self.optimizers[role]
        optimizer.load_state_dict(state)
        _match_param_layouts(optimizer)


def _match_param_layouts(optimizer) -> None:
    """Give each per-parameter state tensor (Adam's moments) its parameter's memory layout.

    Checkpoints store contiguous tensors; a channels_last parameter must get channels_last
    moments back, or a fused step that walks both in memory order pairs the wrong elements.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if (
                    torch.is_tensor(value)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(
                        value
                    )
