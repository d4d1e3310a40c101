"""Launching: which backend a launch asks for, the Accelerator a run uses, the launch types it
refuses, and the few collective operations the core needs beyond DDP's gradient all-reduce."""

from __future__ import annotations

import json
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge.errors import GanforgeError, RecipeError

#: What `accelerate launch --use_deepspeed` / `--use_fsdp` set for the launched processes.
_LAUNCHER_FLAGS = {"ACCELERATE_USE_DEEPSPEED": "deepspeed", "ACCELERATE_USE_FSDP": "fsdp"}


@dataclass(frozen=True)
class Launch:
    """The backend a run executes with (``ganforge.execution``), resolved from the recipe's
    ``[distributed]`` table and what the launcher asked for."""

    backend: str  # "ddp", "deepspeed" or "fsdp"
    zero_stage: int = 0  # 1, 2 or 3 under "deepspeed"


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes")


def plan_launch(
    settings: Mapping[str, Any],
    grad_clip: float,
    mixed_precision: str = "auto",
    env: Mapping[str, str] = os.environ,
    *,
    regularizers: bool = False,
) -> Launch:
    """The backend for this run, or one error listing everything the launch asks for that
    ganforge would not do exactly (never a silent disagreement between launcher and recipe).
    ``regularizers``: whether the recipe has any (ZeRO-3 runs none)."""
    launcher = next((kind for name, kind in _LAUNCHER_FLAGS.items() if _flag(env, name)), None)
    backend, problems = settings["backend"], []
    if backend == "auto":
        backend = launcher or "ddp"
    elif launcher and launcher != backend:
        problems.append(
            f"the launcher asks for {launcher} (--use_{launcher}), the recipe for "
            f'distributed.backend = "{backend}": drop one of the two, or make them agree'
        )
    steps = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").strip()
    if steps not in ("1", ""):
        problems.append(
            f"gradient accumulation ({steps} steps) is not supported: a GAN step is one "
            "update of each model; set --gradient_accumulation_steps 1 and train.batch_size"
        )
    if mixed_precision == "auto":  # the launcher's --mixed_precision
        mixed_precision = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    stage = 0
    if backend == "deepspeed":
        stage = _zero_stage(settings["zero_stage"], grad_clip, env, problems, mixed_precision)
    if stage == 3 and regularizers:
        problems.append(
            "DeepSpeed ZeRO-3 runs no regularizers yet: penalties on input gradients "
            "(gradient penalty, R1, R2, path length) backward a second time through "
            "parameters ZeRO-3 has already released. Use ZeRO-1/2 (--zero_stage 2) or FSDP2, "
            "or remove [regularizers]"
        )
    if backend == "fsdp" and _flag(env, "FSDP_OFFLOAD_PARAMS"):
        problems.append("FSDP parameter offload is not supported yet")
    if backend != "ddp" and mixed_precision == "fp16":
        problems.append(
            f"fp16 under {backend} has not been checked on a GPU yet: use bf16 "
            "(--mixed_precision bf16) or no mixed precision"
        )
    if problems:
        raise GanforgeError(
            "this launch cannot run as asked (docs/distributed.md):\n"
            + "\n".join(f"  {p}" for p in problems)
        )
    return Launch(backend, stage)


def _zero_stage(
    recipe_stage: int, grad_clip: float, env, problems: list[str], precision: str = "no"
) -> int:
    """The ZeRO stage: the recipe's, else the launcher's, else 2; and the launcher's DeepSpeed
    options that ganforge would not honour."""
    launcher_stage, options = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").strip(), {}
    config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
    if config_file and config_file.lower() != "none":
        options = _deepspeed_config(Path(config_file), env, problems, precision)
        launcher_stage = str(options.get("zero_optimization", {}).get("stage", launcher_stage))
        clip = options.get("gradient_clipping", "auto")
        if clip != "auto":
            env = {**env, "ACCELERATE_GRADIENT_CLIPPING": str(clip)}
    for where in ("OPTIMIZER", "PARAM"):
        device = env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{where}_DEVICE", "none").strip().lower()
        offload = options.get("zero_optimization", {}).get(f"offload_{where.lower()}", {})
        if not isinstance(offload, dict):
            problems.append(
                f"the DeepSpeed config's zero_optimization.offload_{where.lower()} is "
                f"{offload!r}, not an object"
            )
            offload = {}
        if device not in ("none", "") or offload.get("device", "none") != "none":
            problems.append(
                f"ZeRO {where.lower()} offload is not supported yet (it has not been checked "
                "with two engines)"
            )
    clip = env.get("ACCELERATE_GRADIENT_CLIPPING", "").strip()
    try:
        clip_value = float(clip) if clip and clip.lower() not in ("auto", "none") else None
    except ValueError:
        problems.append(f"gradient clipping {clip!r} is not a number")
        clip_value = None
    if clip_value is not None and clip_value != grad_clip:
        problems.append(
            f"the launcher clips gradients at {clip}, the recipe at train.grad_clip = "
            f"{grad_clip}: ganforge clips as the recipe says; set train.grad_clip = {clip} or "
            "drop --gradient_clipping"
        )
    if launcher_stage and launcher_stage not in ("1", "2", "3"):
        problems.append(f"ZeRO stage {launcher_stage}: ganforge runs stages 1, 2 and 3")
        return 0
    if recipe_stage and launcher_stage and int(launcher_stage) != recipe_stage:
        problems.append(
            f"the launcher asks for ZeRO stage {launcher_stage}, the recipe for "
            f"distributed.zero_stage = {recipe_stage}: make them agree"
        )
    return recipe_stage or int(launcher_stage or 2)


#: The DeepSpeed config keys ganforge reads (each honoured or refused with its reason); every
#: other key is listed as not used, never dropped silently. ganforge builds each engine's
#: config itself (``execution/zero.py``).
_DEEPSPEED_READ = {
    "zero_optimization",
    "gradient_clipping",
    "optimizer",
    "scheduler",
    "fp16",
    "bf16",
    "gradient_accumulation_steps",
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
}
#: ``zero_optimization`` keys ganforge reads: the stage, and the offloads it refuses.
_ZERO_READ = {"stage", "offload_optimizer", "offload_param"}


def _deepspeed_config(
    path: Path, env: Mapping[str, str], problems: list[str], precision: str
) -> dict:
    """The DeepSpeed config file the launcher names, checked key by key: what ganforge honours
    (the ZeRO stage, gradient clipping, bf16 that the launch's precision also asks for), what
    it refuses (its own optimizer or scheduler, fp16, gradient accumulation, batch sizes other
    than the recipe's), and the rest, listed once as not used."""
    try:
        options = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        problems.append(f"cannot read the DeepSpeed config {path}: {err}")
        return {}
    if not isinstance(options, dict):
        problems.append(f"the DeepSpeed config {path} is not a JSON object")
        return {}
    zero = options.get("zero_optimization", {})
    if not isinstance(zero, dict):
        problems.append(f"the DeepSpeed config's zero_optimization is {zero!r}, not an object")
        zero = {}
    options = {**options, "zero_optimization": zero}
    if not isinstance(zero.get("stage", 0), int) or isinstance(zero.get("stage"), bool):
        problems.append(f"the DeepSpeed config's zero_optimization.stage is {zero['stage']!r}")
        zero.pop("stage")
    for key in ("optimizer", "scheduler"):
        if key in options:
            problems.append(
                f"the DeepSpeed config's {key!r} is not used: ganforge builds each model's "
                "optimizer and schedule from the recipe's [optim]; remove it"
            )
    clip = options.get("gradient_clipping", "auto")
    if clip != "auto" and (not isinstance(clip, (int, float)) or isinstance(clip, bool)):
        problems.append(f"the DeepSpeed config's gradient_clipping is {clip!r}, not a number")
        options.pop("gradient_clipping")
    for key in ("fp16", "bf16"):
        table = options.get(key, {})
        enabled = table.get("enabled", False) if isinstance(table, dict) else table
        if enabled is True and key == "fp16":
            problems.append(
                "the DeepSpeed config enables fp16, which has not been checked under DeepSpeed "
                "on a GPU yet: use bf16 (--mixed_precision bf16) or no mixed precision"
            )
        elif enabled is True and precision != "bf16":
            problems.append(
                "the DeepSpeed config enables bf16, the launch does not: ganforge's precision "
                "is run.mixed_precision or --mixed_precision bf16 (its autocast; the engines "
                "keep float32 weights); set one of those, or remove bf16 from the config"
            )
    for key in (
        "gradient_accumulation_steps",
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
    ):
        value = options.get(key, "auto")
        if value not in (("auto", 1) if key == "gradient_accumulation_steps" else ("auto",)):
            problems.append(
                f"the DeepSpeed config's {key} = {value!r} is not used: a GAN step is one "
                'update of each model on train.batch_size images; remove it or set it to "auto"'
            )
    unused = sorted(set(options) - _DEEPSPEED_READ)
    unused += sorted(f"zero_optimization.{k}" for k in set(zero) - _ZERO_READ)
    if unused and env.get("RANK", "0") == "0":
        print(
            f"ganforge: warning: the DeepSpeed config {path} sets what ganforge does not use "
            f"(it builds each engine's config itself): {', '.join(unused)}",
            file=sys.stderr,
            flush=True,
        )
    return options


def ensure_process_group(accelerator) -> None:
    """A torch.distributed process group, for one process too: DeepSpeed's engines and FSDP2's
    device mesh need one. Several processes already have it (Accelerate made it)."""
    if torch.distributed.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if accelerator.device.type == "cuda" else "gloo"
    os.environ.setdefault("LOCAL_RANK", "0")  # read by DeepSpeed's engine
    torch.distributed.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )


def make_accelerator(
    mixed_precision: str,
    log_with: Sequence[str] = (),
    run_dir: str | Path | None = None,
    timeout: float = 1800,
):
    """The run's Accelerator: DDP without per-forward buffer broadcasts, the recipe's precision
    (or the launcher's, for "auto"), the recipe's trackers (writing under ``run_dir/logs``),
    the process group's ``timeout`` (``distributed.timeout``, seconds) and a clear refusal of
    launch types ganforge cannot run."""
    from datetime import timedelta

    from accelerate import Accelerator  # lazy: keeps `ganforge validate` fast
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        DistributedType,
        InitProcessGroupKwargs,
    )

    # Buffers (batch-norm statistics) are not broadcast at every forward: with two models and
    # several forwards per step that would overwrite each rank's train-mode statistics mid-step.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    group = InitProcessGroupKwargs(timeout=timedelta(seconds=timeout))
    kwargs: dict[str, Any] = {"kwargs_handlers": [ddp, group]}
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
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several processes without GPUs (torchrun, `accelerate launch --use_deepspeed`): gloo
        # on the CPU. Without this, Accelerate makes each process a separate one-process run.
        kwargs["cpu"] = True
    # DeepSpeed and FSDP launches are run by ganforge's own executions (plan_launch): Accelerate
    # keeps launching, devices, precision and trackers, and is built without seeing the
    # launcher's DeepSpeed/FSDP flags (its plugins drive one engine per launch).
    hidden = {name: os.environ.pop(name) for name in _LAUNCHER_FLAGS if name in os.environ}
    try:
        accelerator = Accelerator(**kwargs)
    finally:
        os.environ.update(hidden)
    refuse_unsupported(accelerator.distributed_type, DistributedType)
    _warn_about_launch(accelerator)
    return accelerator


def _warn_about_launch(accelerator) -> None:
    """What a launch that runs, but not as the user likely meant, says once at its start."""
    cpu_bf16 = accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16"
    if cpu_bf16 and not native_cpu_bf16():
        print(
            "ganforge: warning: this CPU has no native bfloat16 instructions (AVX512-BF16 or "
            "AMX): bf16 is emulated and slower than float32 here. Set "
            'run.mixed_precision = "no" unless memory is what bf16 is for.',
            file=sys.stderr,
            flush=True,
        )
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if restarts and shared and accelerator.is_main_process:
        print(
            "ganforge: warning: torchrun --max-restarts with its shared rendezvous store: a "
            "restarted group can read the dead workers' addresses from it and fail again "
            "(seen with gloo). Export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun "
            "(docs/distributed.md)",
            file=sys.stderr,
            flush=True,
        )
    asked = processes_asked_for(_parent_command())
    if accelerator.num_processes == 1 and asked > 1:
        print(
            f"ganforge: warning: accelerate launch was asked for {asked} processes but started "
            "one (Accelerate does this on a machine without GPUs unless told to use its "
            "multi-GPU launcher). "
            f"This run trains in one process. For {asked} CPU processes: ACCELERATE_USE_CPU=1 "
            f"accelerate launch --multi_gpu --num_processes {asked} --num_machines 1 "
            "--mixed_precision no -m ganforge ...",
            file=sys.stderr,
            flush=True,
        )


#: ``run.mixed_precision`` that picks bf16 only where it is fast.
BF16_IF_NATIVE = "bf16_if_native"


def resolve_precision(mixed_precision: str, env: Mapping[str, str] = os.environ) -> str:
    """``run.mixed_precision`` as the run uses it: ``"bf16_if_native"`` is ``"bf16"`` where
    the device runs bfloat16 natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or
    AMX), else ``"no"`` (float32): on a CPU without them bf16 is emulated, and the
    Fashion-MNIST recipe ran 15× slower in bf16 than in float32 (an AVX2-only EPYC)."""
    if mixed_precision != BF16_IF_NATIVE:
        return mixed_precision
    use_cpu = env.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    if torch.cuda.is_available() and not use_cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if native_cpu_bf16() else "no"


def native_cpu_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX). Where it does,
    CPU autocast to bf16 speeds convolutions up (2.0× the images/s of float32 for the
    Fashion-MNIST recipe at batch 128 on the 2-core EPYC); where not, it is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: nothing to warn about
        return True


def _parent_command() -> list[str]:
    """The parent process's command line (Linux), or [] where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_asked_for(argv: Sequence[str]) -> int:
    """``N`` of ``--num_processes N`` when ``argv`` is an ``accelerate launch`` command, else 0.

    Accelerate's simple launcher (what it picks for ``--cpu``, or without GPUs and without
    ``--multi_gpu``) starts one process whatever ``--num_processes`` says, and tells the
    process nothing; the launcher's own command line still shows what was asked."""
    names = [Path(part).name for part in argv[:3]]
    if "accelerate" not in names or "launch" not in argv[:4]:
        return 0
    for i, part in enumerate(argv):
        if part == "--":
            break
        value = None
        if part == "--num_processes" and i + 1 < len(argv):
            value = argv[i + 1]
        elif part.startswith("--num_processes="):
            value = part.split("=", 1)[1]
        if value is not None:
            return int(value) if value.isdigit() else 0
        if part in ("-m", "--module") or part.endswith(".py"):
            break  # the rest belongs to the launched program
    return 0


def refuse_unsupported(distributed_type, kinds) -> None:
    """Stop before training a launch configuration the GAN step would train wrongly."""
    if distributed_type in (kinds.DEEPSPEED, kinds.FSDP):
        # make_accelerator hides the launcher's DeepSpeed/FSDP flags from Accelerate; reaching
        # here means an Accelerator built with Accelerate's own plugin, which prepares one
        # engine per launch (with G and D its backward would update the wrong model).
        raise GanforgeError(
            f"{distributed_type.value} through Accelerate's own plugin is not supported: "
            "ganforge drives DeepSpeed and FSDP2 itself, one engine or sharded module per "
            "model; launch with --use_deepspeed / --use_fsdp or set distributed.backend "
            "(docs/distributed.md)"
        )
    if distributed_type in (kinds.XLA, kinds.MEGATRON_LM):
        raise GanforgeError(
            f"{distributed_type.value} launches are not supported: ganforge runs one process, "
            "DDP, DeepSpeed ZeRO or FSDP2 (configs/accelerate/); see docs/distributed.md"
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


def per_process_batch(batch_size: int, accelerator, source: str | None = None) -> int:
    """Each process's share of the global ``train.batch_size``, which must divide evenly."""
    world = accelerator.num_processes
    if batch_size % world:
        problem = f"{batch_size} does not divide by the {world} processes of this launch"
        raise RecipeError([("train.batch_size", problem)], source)
    return batch_size // world


def decide_together(local: float, accelerator) -> float:
    """*Collective.* Every process decides together: the largest of every process's ``local``
    (so one process's "yes", 1.0, is everyone's). One host read."""
    if accelerator.num_processes == 1:
        return local
    flag = torch.tensor(float(local), device=accelerator.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag.item()


def main_decides(
    accelerator,
    decide: Callable[[], torch.Tensor | None],
    failed: str,
    like: torch.Tensor | None = None,
    error: type[GanforgeError] = GanforgeError,
) -> torch.Tensor | None:
    """*Collective.* The main process decides, the others follow: ``decide()`` runs on the main
    process only, and every process gets its result (a tensor shaped like ``like``, broadcast),
    or raises: the main process its own GanforgeError, the others an ``error`` saying
    ``failed``."""
    result, problem = like, None
    if accelerator.is_main_process:
        try:
            result = decide()
        except GanforgeError as err:
            problem = err
    if accelerator.num_processes > 1:
        flag = torch.tensor(float(problem is not None), device=accelerator.device)
        torch.distributed.broadcast(flag, src=0)
        if flag.item() and problem is None:
            problem = error(failed)
    if problem is not None:
        raise problem
    return result if like is None else broadcast_from_main(result, accelerator)


def gather_rank_states(
    local: dict[str, torch.Tensor], accelerator
) -> dict[str, torch.Tensor] | None:
    """Every process's ``local`` tensors (uint8) on the main process as ``rank<r>.<name>``.

    A collective call: every process calls it; the main process gets the dict, others None.
    """
    if accelerator.num_processes == 1:
        return {f"rank0.{k}": v for k, v in local.items()}
    names = sorted(local)
    flat = torch.cat([local[n].reshape(-1).to(torch.uint8) for n in names])
    sizes = torch.tensor([local[n].numel() for n in names], dtype=torch.int64)
    all_sizes = _all_gather_bytes(sizes.view(torch.uint8), accelerator)
    everyone = _all_gather_bytes(flat, accelerator)
    if not accelerator.is_main_process:
        return None
    out = {}
    for rank, (data, rank_sizes) in enumerate(zip(everyone, all_sizes, strict=True)):
        parts = torch.split(data, rank_sizes.view(torch.int64).tolist())
        out.update({f"rank{rank}.{n}": p.clone() for n, p in zip(names, parts, strict=True)})
    return out


def _all_gather_bytes(data: torch.Tensor, accelerator) -> list[torch.Tensor]:
    """*Collective.* Every process's 1-D uint8 ``data`` (of any length), in rank order, on the
    CPU of every process."""
    import torch.distributed as dist

    device = accelerator.device
    size = torch.tensor([data.numel()], device=device)
    sizes = [torch.empty_like(size) for _ in range(accelerator.num_processes)]
    dist.all_gather(sizes, size)
    padded = torch.zeros(max(int(s) for s in sizes), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data.to(device)
    everyone = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(everyone, padded)
    return [d[: int(n)].cpu() for d, n in zip(everyone, sizes, strict=True)]


def lost_peer(err: BaseException) -> str | None:
    """What a collective's failure says about the other processes, when it is one (a peer
    that died, was killed, stopped with its own error, or stalled past the timeout); else
    None. Only under several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "torch.distributed" not in sys.modules:
        return None
    text = str(err)
    lost = isinstance(err, (torch.distributed.DistNetworkError, torch.distributed.DistStoreError))
    lost = lost or "Connection closed by peer" in text or "Connection reset by peer" in text
    # A collective's own timeout (gloo, c10d), not any "timed out" (a DataLoader's, say).
    lost = lost or (("gloo" in text or "c10d" in text) and "imed out" in text)
    if not lost:
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return (
        f"another process of this launch stopped, was killed or stalled ({first[:200]}); its "
        "own output says why (rank 0's error, a signal, the out-of-memory killer). If none "
        "does, a process hung or a node was lost: each gives up after distributed.timeout "
        "seconds"
    )


def gather_json(value: Any, accelerator) -> list[Any]:
    """*Collective.* Every process's JSON-able ``value``, in rank order, on every process
    (JSON text in uint8 tensors: nothing another process sends is unpickled)."""
    if accelerator.num_processes == 1:
        return [value]
    text = json.dumps(value, sort_keys=True, default=str).encode()
    everyone = _all_gather_bytes(torch.frombuffer(bytearray(text), dtype=torch.uint8), accelerator)
    return [json.loads(data.numpy().tobytes()) for data in everyone]


def agree(accelerator, facts: Mapping[str, Any], hints: Mapping[str, str] | None = None) -> None:
    """*Collective.* Stop every process together unless every process states the same
    ``facts`` (one exchange at start-up, before anything costly): a GanforgeError (exit 2) on
    every process, naming each key that differs and which ranks hold which value, followed by
    ``hints[key]`` where given. Processes that started on different recipes, versions or
    checkpoints would otherwise issue different collectives and hang, or diverge silently."""
    everyone = gather_json(dict(facts), accelerator)
    lines = []
    for key in sorted(set().union(*everyone)):
        values = [json.dumps(f.get(key), sort_keys=True, default=str) for f in everyone]
        if len(set(values)) == 1:
            continue
        held: dict[str, list[int]] = {}
        for rank, value in enumerate(values):
            held.setdefault(value, []).append(rank)
        said = "; ".join(
            f"rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}: {_shown(value)}"
            for value, ranks in held.items()
        )
        hint = (hints or {}).get(key)
        lines.append(f"  {key}: {said}" + (f"\n    {hint}" if hint else ""))
    if lines:
        raise GanforgeError(
            f"the {accelerator.num_processes} processes of this launch do not agree; nothing "
            "was changed:\n" + "\n".join(lines)
        )


def _shown(value: str) -> str:
    """A JSON value as a message shows it: strings without their quotes."""
    loaded = json.loads(value)
    return loaded if isinstance(loaded, str) else value
