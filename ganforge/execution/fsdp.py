"""FSDP2: ``fully_shard`` on G and on D, each with its own optimizer over its own shards.

Parameters, gradients and optimizer state are sharded across the processes (DTensors). A
model's whole parameters are gathered at the first forward of a phase and freed after each
update, so penalties that backward twice through a model (R1, the gradient penalty, path
length) find them in place.
Accelerate's FSDP plugin is not used: on a CPU it silently becomes DDP, and it wraps every
model it prepares the same way. The non-finite check, the gradient norm and clipping work on
each rank's shards with one all-reduce each; checkpoints gather whole tensors.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ganforge.distributed import ensure_process_group
from ganforge.execution import Execution, autocast_forward
from ganforge.updates import non_finite, total_norm


def _is_dtensor(tensor) -> bool:
    return hasattr(tensor, "full_tensor")


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """*Collective* for a DTensor: the whole tensor on every rank."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


class FSDPExecution(Execution):
    """G and D each fully sharded across the processes (FSDP2)."""

    name = "fsdp"
    sharded = True

    def __init__(self, accelerator, grad_clip: float):
        super().__init__(accelerator, grad_clip)
        from torch.distributed.device_mesh import init_device_mesh

        ensure_process_group(accelerator)
        world = torch.distributed.get_world_size()
        self.mesh = init_device_mesh(accelerator.device.type, (world,))
        self._params: dict[str, list[nn.Parameter]] = {}

    def prepare(self, generator, discriminator, make_optimizer):
        from torch.distributed.fsdp import fully_shard

        for role, model in (("generator", generator), ("discriminator", discriminator)):
            # Penalties on input gradients (R1, the gradient penalty, path length) backward
            # twice through a model: its whole parameters must outlive the first backward.
            # They are gathered at a phase's first forward and freed after each update.
            fully_shard(model, mesh=self.mesh, reshard_after_forward=False)
            model.set_reshard_after_backward(False)
            model.forward = _outputs_not_views(model.forward)
            autocast_forward(model, self.acc)
            self.modules[role] = model
            # Built on the sharded parameters (DTensors): each rank steps its own shards.
            self.optimizers[role] = make_optimizer(role, model.parameters())
            # In the optimizer's order (its state_dict numbering; frozen parameters left out).
            groups = self.optimizers[role].param_groups
            self._params[role] = [p for group in groups for p in group["params"]]
        return generator, discriminator

    def update(self, role, loss, measure):
        params = self._params[role]
        for p in params:
            p.grad = None
        loss.backward()  # FSDP2 reduce-scatters each gradient: every rank holds its shards
        local = [p.grad.to_local() for p in params if p.grad is not None]
        found_inf = non_finite([*local, loss.detach()], self._one)
        norm = None
        if measure or self.grad_clip > 0:
            squares = total_norm(local).square()
            torch.distributed.all_reduce(squares)
            norm = squares.sqrt()
            if self.grad_clip > 0:
                found_inf = torch.maximum(found_inf, (~torch.isfinite(norm)).float())
        torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX)
        if self.grad_clip > 0:  # what clip_grads_with_norm_ does, on the shards
            torch._foreach_mul_(local, (self.grad_clip / (norm + 1e-6)).clamp(max=1.0))
        if found_inf.item():
            for p in params:
                p.grad = None
        else:
            self.optimizers[role].step()
        # Free the whole parameters of both models (D's were used in G's backward): every
        # phase starts from the shards, and its first forward gathers the updated ones.
        for module in self.modules.values():
            module.reshard()
        return norm, found_inf

    @contextlib.contextmanager
    def full_tensors(self, role):
        yield [_whole(t) for t in self.modules[role].state_dict(keep_vars=True).values()]

    def optimizer_state(self, role):
        saved = self.optimizers[role].state_dict()
        state = {
            index: {k: _whole(v) if torch.is_tensor(v) else v for k, v in entry.items()}
            for index, entry in sorted(saved["state"].items())
        }
        return {"state": state, "param_groups": saved["param_groups"]}

    def load_optimizer_state(self, role, state):
        from torch.distributed.tensor import distribute_tensor

        params = self._params[role]
        sharded = {}
        for index, entry in state["state"].items():
            param = params[int(index)]
            sharded[index] = {
                k: distribute_tensor(v.to(self.acc.device), param.device_mesh, param.placements)
                if torch.is_tensor(v) and v.shape == param.shape
                else v
                for k, v in entry.items()
            }
        self.optimizers[role].load_state_dict(
            {"state": sharded, "param_groups": state["param_groups"]}
        )


def _outputs_not_views(forward):
    """``forward`` with every output tensor that is a view of another cloned (a D's logits are
    usually ``out.view(-1)``). FSDP2 registers its pre-backward hook on a module's outputs, and
    an in-place operation on a view (``logits += ...`` in a loss plugin) would drop it: the
    all-gather is skipped and gradients go wrong silently, which FSDP2 warns of at every run.
    The clone costs a copy of the logits and features, nothing beside the model's own
    activations."""

    def detached_from_views(value):
        if isinstance(value, torch.Tensor):
            return value.clone() if value._is_view() else value
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # CriticOutput
            return type(value)(*(detached_from_views(v) for v in value))
        if isinstance(value, (tuple, list)):
            return type(value)(detached_from_views(v) for v in value)
        if isinstance(value, dict):
            return {k: detached_from_views(v) for k, v in value.items()}
        return value

    def wrapped(*args, **kwargs):
        return detached_from_views(forward(*args, **kwargs))

    return wrapped
