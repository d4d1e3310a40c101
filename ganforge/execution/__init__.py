"""How each model's update runs: the seam between the training step and the backend.

The step (``ganforge/trainer.py``) reads the same under every backend: it calls G and D
through the callables :meth:`Execution.prepare` returns, and hands each loss to
:meth:`Execution.update`, which owns backward, the non-finite check (all-reduced: every rank
skips together), ``train.grad_clip`` and the optimizer step. Checkpoints, the EMA and the
export read and write *full* tensors through the execution, whatever the backend shards.

- ``ddp`` (:class:`~ganforge.execution.ddp.DDPExecution`): one process, or Accelerate's
  DistributedDataParallel.
- ``deepspeed`` (:class:`~ganforge.execution.zero.ZeroExecution`): one DeepSpeed ZeRO engine
  per model, driven directly (Accelerate's integration drives one engine per launch).
- ``fsdp`` (:class:`~ganforge.execution.fsdp.FSDPExecution`): FSDP2, ``fully_shard`` on G and
  on D.

Roles are ``"generator"`` and ``"discriminator"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

ROLES = ("generator", "discriminator")
#: ``make_optimizer(role, parameters)``: the recipe's optimizer for ``role``.
MakeOptimizer = Callable[..., torch.optim.Optimizer]


class Execution:
    """The backend interface. Methods marked *collective* must be called by every process, in
    the same order."""

    name = "base"
    #: Whether a model's parameters are split across processes (ZeRO-3, FSDP2): then nothing
    #: may run one model's forward on the main process alone.
    sharded = False

    def __init__(self, accelerator, grad_clip: float):
        self.acc, self.grad_clip = accelerator, grad_clip
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._one = torch.ones((), dtype=torch.float32, device=accelerator.device)
        self._state_tensors: dict[str, list[torch.Tensor]] = {}

    # ------------------------------------------------------------------ training

    def prepare(
        self, generator: nn.Module, discriminator: nn.Module, make_optimizer: MakeOptimizer
    ) -> tuple[Callable, Callable]:
        """Wrap the models, build their optimizers (``make_optimizer(role, parameters)``, on
        the parameters each process steps) and return G and D as the step calls them."""
        raise NotImplementedError

    def update(
        self, role: str, loss: torch.Tensor, measure: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Backward, the non-finite check, clipping and the optimizer step of ``role``.

        Returns the gradient norm (None when neither ``measure`` nor clipping asks for it) and
        the skip flag (1.0 when this update was skipped on every rank), as device tensors.
        """
        raise NotImplementedError

    def no_sync(self, role: str) -> contextlib.AbstractContextManager:
        """A context in which ``role``'s gradients are not synchronised (its frozen phase)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def float32(self, model: Callable) -> Iterator[None]:
        """Calls of ``model`` (as :meth:`prepare` returned it) in the block run with autocast
        off, for penalties on input gradients: under mixed precision their double backward
        would lose precision and overflow, and the loss scaler must only scale the final
        backward.

        Under mixed precision Accelerate (and :func:`autocast_forward`) replace the inner
        module's forward with an autocast wrapper, inside any DDP wrapper: the original is
        swapped back in for the block, calls still going through DDP and the module's hooks.
        """
        inner = self.acc.unwrap_model(model)
        original = inner.__dict__.get("_original_forward")
        wrapped = inner.__dict__.get("forward")
        with torch.autocast(device_type=self.acc.device.type, enabled=False):
            if original is None or wrapped is None:
                yield
                return
            inner.forward = original
            try:
                yield
            finally:
                inner.forward = wrapped

    def param_groups(self, role: str) -> list[dict[str, Any]]:
        """The optimizer's groups, whose ``lr`` the step sets (decay) and logs."""
        return self.optimizers[role].param_groups

    # ------------------------------------------------------------------ full state

    @contextlib.contextmanager
    def full_tensors(self, role: str) -> Iterator[Sequence[torch.Tensor]]:
        """*Collective.* ``role``'s parameters and buffers, whole, in ``state_dict`` order,
        for the duration of the block (the EMA averages them every step)."""
        yield self.state_tensors(role)

    def state_tensors(self, role: str) -> list[torch.Tensor]:
        """``role``'s parameters and buffers as the module holds them, in ``state_dict``
        order: the same tensor objects all run long (loading copies into them), so listed
        once."""
        if role not in self._state_tensors:
            module = self.modules[role]
            self._state_tensors[role] = list(module.state_dict(keep_vars=True).values())
        return self._state_tensors[role]

    def model_state(self, role: str) -> dict[str, torch.Tensor]:
        """*Collective.* ``role``'s whole ``state_dict`` (detached; the caller copies)."""
        with self.full_tensors(role) as tensors:
            names = self.modules[role].state_dict(keep_vars=True).keys()
            # Gathered tensors of a sharded model live only inside the block: copied out.
            return {
                n: t.detach().clone() if self.sharded else t.detach()
                for n, t in zip(names, tensors, strict=True)
            }

    def optimizer_state(self, role: str) -> dict[str, Any]:
        """*Collective.* ``role``'s optimizer state as ``torch.optim.Optimizer.state_dict()``
        would give it for the unsharded model: per-parameter state keyed by the parameter's
        index, whole tensors. Every backend writes and reads this one form, so checkpoints
        move between backends and numbers of processes."""
        return self.optimizers[role].state_dict()

    def load_optimizer_state(self, role: str, state: dict[str, Any]) -> None:
        """*Collective.* Give ``role``'s optimizer the state :meth:`optimizer_state` wrote."""
        self.optimizers[role].load_state_dict(state)

    def local_bytes(self, role: str) -> dict[str, int]:
        """Bytes this process holds of ``role``'s parameters and of its optimizer state."""
        optimizer = self.optimizers[role]
        return {
            "parameters": _nbytes(self.local_parameters(role)),
            "optimizer": _nbytes(
                v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
            ),
        }

    def local_parameters(self, role: str) -> list[torch.Tensor]:
        """``role``'s parameters as this process stores them (shards where sharded)."""
        return list(self.modules[role].parameters())


def _nbytes(tensors) -> int:
    return sum(_local(t).numel() * t.element_size() for t in tensors)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's piece of ``tensor`` (a DTensor's shard, or the tensor itself)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def autocast_forward(module: nn.Module, accelerator) -> None:
    """Run ``module``'s forward under the launch's autocast (bf16) with its outputs handed back
    in float32, exactly as Accelerate's ``prepare`` does for DDP: the original stays in
    ``_original_forward``, which the core's float32 critic pass (penalties) calls instead."""
    if accelerator.mixed_precision == "no":
        return
    from accelerate.utils import convert_outputs_to_fp32

    original = module.forward

    def forward(*args, **kwargs):
        with accelerator.autocast():
            return original(*args, **kwargs)

    module._original_forward = original
    module.forward = convert_outputs_to_fp32(forward)


def configure_device(accelerator, tf32: str, cudnn_benchmark: bool) -> None:
    """``train.tf32`` and ``train.cudnn_benchmark`` on a GPU (process-wide, as PyTorch keeps
    them; "auto" leaves PyTorch's TF32 default)."""
    if accelerator.device.type != "cuda":
        return
    if tf32 != "auto":
        torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
        torch.backends.cudnn.allow_tf32 = tf32 == "on"
    torch.backends.cudnn.benchmark = cudnn_benchmark


def make_execution(
    backend: str, accelerator, grad_clip: float, *, zero_stage: int = 2, batch_size: int = 0
) -> Execution:
    """The execution for ``backend`` ("ddp", "deepspeed" or "fsdp")."""
    if backend == "deepspeed":
        from ganforge.execution.zero import ZeroExecution

        return ZeroExecution(accelerator, grad_clip, zero_stage, batch_size)
    if backend == "fsdp":
        from ganforge.execution.fsdp import FSDPExecution

        return FSDPExecution(accelerator, grad_clip)
    from ganforge.execution.ddp import DDPExecution

    return DDPExecution(accelerator, grad_clip)
