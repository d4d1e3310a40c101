"""Launching: the Accelerator a run uses, the launch types it refuses, and the few collective
operations the core needs beyond DDP's gradient all-reduce."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge.errors import GanforgeError


def make_accelerator(
    mixed_precision: str, log_with: Sequence[str] = (), run_dir: str | Path | None = None
):
    """The run's Accelerator: DDP without per-forward buffer broadcasts, the recipe's precision
    (or the launcher's, for "auto"), the recipe's trackers (writing under ``run_dir/logs``)
    and a clear refusal of launch types ganforge cannot run."""
    from accelerate import Accelerator  # lazy: keeps `ganforge validate` fast
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType

    # Buffers (batch-norm statistics) are not broadcast at every forward: with two models and
    # several forwards per step that would overwrite each rank's train-mode statistics mid-step.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    kwargs: dict[str, Any] = {"kwargs_handlers": [ddp]}
    if log_with:
        from accelerate.utils import ProjectConfiguration

        from ganforge import tracking

        tracking.check_available(list(log_with))
        kwargs["log_with"] = list(log_with)
        kwargs["project_config"] = ProjectConfiguration(
            project_dir=str(run_dir), logging_dir=str(Path(run_dir) / tracking.LOG_DIR)
        )
    if mixed_precision != "auto":  # "auto" defers to `accelerate launch --mixed_precision`
        kwargs["mixed_precision"] = mixed_precision
    # torch >= 2.13 names the option `forward_sync_buffers` and warns about the old name; the
    # old one is kept so older torch versions (the GPU images run 2.11) behave the same.
    warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
    accelerator = Accelerator(**kwargs)
    refuse_unsupported(accelerator.distributed_type, DistributedType)
    return accelerator


def refuse_unsupported(distributed_type, kinds) -> None:
    """Stop before training a launch configuration the GAN step would train wrongly."""
    if distributed_type == kinds.DEEPSPEED:
        # Accelerate prepares one model per DeepSpeed engine and its `backward` steps that
        # engine: with G and D it would update the wrong model. DeepSpeed also owns loss
        # scaling, clipping and the overflow skip, which this step does itself.
        raise GanforgeError(
            "DeepSpeed launches are not supported yet: a GAN trains two models with their own "
            "optimizers, and Accelerate's DeepSpeed integration drives one engine whose "
            "backward would update the wrong model. Launch with DDP instead "
            "(configs/accelerate/multi_gpu.yaml); see docs/distributed.md"
        )
    if distributed_type in (kinds.FSDP, kinds.XLA, kinds.MEGATRON_LM):
        raise GanforgeError(
            f"{distributed_type.value} launches are not supported: ganforge runs one process, "
            "or several with DDP (configs/accelerate/); see docs/distributed.md"
        )


def broadcast_buffers(modules: Iterable[nn.Module], accelerator) -> None:
    """Give every process the main process's buffers (batch-norm statistics) of ``modules``."""
    if accelerator.num_processes == 1:
        return
    for module in modules:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def broadcast_from_main(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    """The main process's ``tensor`` on every process (on the CPU, as given)."""
    if accelerator.num_processes == 1:
        return tensor
    sent = tensor.to(accelerator.device)
    torch.distributed.broadcast(sent, src=0)
    return sent.cpu()


def gather_rank_states(
    local: dict[str, torch.Tensor], accelerator
) -> dict[str, torch.Tensor] | None:
    """Every process's ``local`` tensors (uint8) on the main process as ``rank<r>.<name>``.

    A collective call: every process calls it; the main process gets the dict, others None.
    """
    world = accelerator.num_processes
    if world == 1:
        return {f"rank0.{k}": v for k, v in local.items()}
    import torch.distributed as dist

    device = accelerator.device
    names = sorted(local)
    flat = torch.cat([local[n].reshape(-1).to(torch.uint8) for n in names]).to(device)
    sizes = torch.tensor([local[n].numel() for n in names], device=device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    longest = max(int(s.sum()) for s in all_sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: flat.numel()] = flat
    everyone = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(everyone, padded)
    if not accelerator.is_main_process:
        return None
    out = {}
    for rank, (data, rank_sizes) in enumerate(zip(everyone, all_sizes, strict=True)):
        parts = torch.split(data.cpu()[: int(rank_sizes.sum())], rank_sizes.tolist())
        out.update({f"rank{rank}.{n}": p.clone() for n, p in zip(names, parts, strict=True)})
    return out
