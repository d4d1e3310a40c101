"""DeepSpeed ZeRO: one engine per model, driven directly.

Accelerate's DeepSpeed integration prepares one engine per launch and its ``backward`` drives
that engine: with G and D it steps the wrong model. Here each model gets its own
``deepspeed.initialize`` with ganforge's own torch optimizer, and the step uses each engine for
``backward`` and ``step`` only. Every forward calls the bare module (``engine.module``): through
D's engine, its hooks would fire inside G's backward (ZeRO-0 refuses, ZeRO-2 with R1 crashes).

What DeepSpeed would otherwise decide silently is set explicitly: gradient clipping is
``train.grad_clip`` (0: none), the engines run in float32 with ganforge's autocast for bf16
(penalties need a float32 critic pass, which DeepSpeed's bf16 weights cannot give), and
nothing is pickled: state is read and written as whole tensors through DeepSpeed's
``safe_get_full_*`` / ``safe_set_full_*`` functions.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any

import torch

from ganforge.distributed import ensure_process_group
from ganforge.execution import Execution, _nbytes, autocast_forward
from ganforge.updates import non_finite


def import_deepspeed():
    """DeepSpeed, set up for training GANs on any device.

    Its CPU shared-memory all-reduce is a C++ op compiled at the first process group (minutes,
    and a build killed half-way leaves a lock later runs wait on forever). DeepSpeed only uses
    it in ``inference_all_reduce``, which training never calls, so it is marked unavailable and
    never built: training all-reduces go through torch.distributed either way.
    """
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # no probing for other accelerators
    try:
        import deepspeed
    except ImportError:
        from ganforge.errors import GanforgeError

        raise GanforgeError(
            'distributed.backend = "deepspeed" needs DeepSpeed: pip install "ganforge[deepspeed]"'
        ) from None
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


class ZeroExecution(Execution):
    """DeepSpeed ZeRO stage 1 (optimizer state sharded), 2 (and gradients) or 3 (and
    parameters), one engine for G and one for D."""

    name = "deepspeed"

    def __init__(self, accelerator, grad_clip: float, stage: int, batch_size: int):
        super().__init__(accelerator, grad_clip)
        self.batch_size = batch_size
        if stage not in (1, 2, 3):
            raise ValueError(f"ZeRO stage {stage}: ganforge runs stages 1, 2 and 3")
        self.stage, self.sharded = stage, stage == 3
        self.deepspeed = import_deepspeed()
        ensure_process_group(accelerator)
        backend = torch.distributed.get_backend()
        self.deepspeed.init_distributed(dist_backend=backend, verbose=False)
        self.engines: dict[str, Any] = {}

    def _config(self) -> dict[str, Any]:
        world = torch.distributed.get_world_size()
        return {
            "train_batch_size": self.batch_size,
            "train_micro_batch_size_per_gpu": self.batch_size // world,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": self.grad_clip,  # ganforge's, never DeepSpeed's default
            "zero_optimization": {"stage": self.stage},
            "bf16": {"enabled": False},  # bf16 is ganforge's autocast around forwards
            "fp16": {"enabled": False},
            "zero_allow_untested_optimizer": True,  # ganforge's torch Adam/AdamW
            "steps_per_print": 2**31,
            "wall_clock_breakdown": False,
        }

    def prepare(self, generator, discriminator, make_optimizer):
        # Each parameter group's parameters with their index in the unsharded optimizer's
        # state_dict (numbered through the groups in order, as torch does; frozen ones out).
        self._group_params: dict[str, list[list[tuple[int, torch.nn.Parameter]]]] = {}
        for role, model in (("generator", generator), ("discriminator", discriminator)):
            optimizer = make_optimizer(role, model.parameters())
            numbered = itertools.count()
            self._group_params[role] = [
                [(next(numbered), p) for p in group["params"]] for group in optimizer.param_groups
            ]
            engine, *_ = self.deepspeed.initialize(
                model=model, optimizer=optimizer, config=self._config()
            )
            self.engines[role] = engine
            self.modules[role] = engine.module
            self.optimizers[role] = engine.optimizer.optimizer  # the torch optimizer inside
            autocast_forward(engine.module, self.acc)
        return self.modules["generator"], self.modules["discriminator"]

    def update(self, role, loss, measure):
        engine = self.engines[role]
        engine.backward(loss)
        found_inf = non_finite([loss.detach()], self._one)
        torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX)
        if found_inf.item():
            # Not engine.zero_grad(): at ZeRO-3 it leaves the skipped gradients in place for
            # the next update to add to.
            engine.optimizer.zero_grad(set_to_none=True)
            norm = torch.full((), float("nan"), device=self.acc.device)
        else:
            # ZeRO's step takes the global gradient norm over every rank's partition and skips
            # (on every rank) when it is not finite: the gradient half of the check.
            engine.step()
            found_inf.fill_(float(engine.optimizer.overflow))
            measured = engine.get_global_grad_norm()  # None where ZeRO did not take it
            norm = torch.tensor(
                float("nan") if measured is None else float(measured), device=self.acc.device
            )
        return (norm if measure or self.grad_clip > 0 else None), found_inf

    # ------------------------------------------------------------------ full state

    @contextlib.contextmanager
    def full_tensors(self, role):
        if self.stage < 3:  # parameters stay whole on every rank below ZeRO-3
            yield self.state_tensors(role)
            return
        with self.deepspeed.zero.GatheredParameters(self._params(role)):
            yield self.state_tensors(role)

    def _flat_partitions(self, role) -> list[torch.Tensor]:
        """The float32 partitions this rank's torch optimizer steps (its state's keys)."""
        zero = self.engines[role].optimizer
        if hasattr(zero, "single_partition_of_fp32_groups"):  # ZeRO-1/2
            return list(zero.single_partition_of_fp32_groups)
        return list(zero.fp32_partitioned_groups_flat)  # ZeRO-3

    def _params(self, role) -> list[torch.nn.Parameter]:
        return list(self.modules[role].parameters())

    def _relink(self, role) -> None:
        """ZeRO-1/2 links each parameter to its optimizer state after the first step, once,
        but before the later groups' state exists (DeepSpeed 0.19.8): with several parameter
        groups (several critics) those links are empty. Linked again where state exists."""
        zero = self.engines[role].optimizer
        flats = self._flat_partitions(role)
        if hasattr(zero, "_hp_optimizer_states_linked") and all(
            self.optimizers[role].state.get(flat) for flat in flats
        ):
            zero._hp_optimizer_states_linked = False
            zero._lazy_init_hp_params_optimizer_state()

    def optimizer_state(self, role):
        from deepspeed.utils import safe_get_full_optimizer_state

        inner, members = self.optimizers[role], self._group_params[role]
        groups = [
            {**{k: v for k, v in group.items() if k != "params"}, "params": [i for i, _ in pairs]}
            for group, pairs in zip(inner.param_groups, members, strict=True)
        ]
        flats = self._flat_partitions(role)
        firsts = [inner.state.get(flat, {}) for flat in flats]
        if not all(firsts):  # no update yet: Adam's state is created at its first step
            return {"state": {}, "param_groups": groups}
        self._relink(role)
        state = {}
        for first, pairs in zip(firsts, members, strict=True):
            moments = [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]
            for index, param in pairs:
                shape = getattr(param, "ds_shape", param.shape)
                entry = {k: v.detach().clone() for k, v in first.items() if k not in moments}
                for key in moments:  # collective: every rank, same order
                    full = safe_get_full_optimizer_state(param, key)
                    entry[key] = full.reshape(shape).clone()
                state[index] = entry
        return {"state": {i: state[i] for i in sorted(state)}, "param_groups": groups}

    def load_optimizer_state(self, role, state):
        from deepspeed.utils import safe_set_full_optimizer_state

        inner = self.optimizers[role]
        for group, saved in zip(inner.param_groups, state["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
        if not state["state"]:
            return
        saved_state = {int(k): v for k, v in state["state"].items()}
        flats, members = self._flat_partitions(role), self._group_params[role]
        for flat, pairs in zip(flats, members, strict=True):
            first = saved_state[pairs[0][0]]  # Adam's state, created as its step would
            moments = [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]
            inner.state[flat] = {
                **{
                    k: torch.as_tensor(v).clone().to(flat.device)
                    for k, v in first.items()
                    if k not in moments
                },
                **{k: torch.zeros_like(flat) for k in moments},
            }
        self._relink(role)  # ZeRO-1/2: link the views
        zero = self.engines[role].optimizer
        for index, param in (pair for pairs in members for pair in pairs):
            entry = saved_state[index]
            for key in (k for k, v in entry.items() if torch.is_tensor(v) and v.dim() > 0):
                value = entry[key].float()
                if self.stage == 3:
                    _set_zero3_partition(zero, param, value, key)
                else:
                    safe_set_full_optimizer_state(param, value, key)

    def local_parameters(self, role):
        return [p.ds_tensor if hasattr(p, "ds_tensor") else p for p in self._params(role)]

    def local_bytes(self, role):
        master = _nbytes(self._flat_partitions(role))  # ZeRO's float32 copy of its partition
        return {**super().local_bytes(role), "master": master}


def _set_zero3_partition(zero, param, value: torch.Tensor, key: str) -> None:
    """This rank's piece of a whole optimizer-state tensor, into ZeRO-3's partition of it.

    What ``safe_set_full_optimizer_state`` does at ZeRO-3, also for a parameter whose last
    partition is padding (DeepSpeed 0.19.8 narrows past the end there, e.g. a one-element bias
    on two ranks): the padding is set to 0.
    """
    partition, _ = zero._get_fp32_opt_state_partition(
        param, release_swap_buffers=False, optim_state_key=key
    )
    size, rank = partition.numel(), zero._get_param_partition_rank(param)
    flat = value.flatten().to(partition.device)
    piece = flat[size * rank : size * (rank + 1)]
    partition.data.zero_()
    partition.data[: piece.numel()].copy_(piece)
