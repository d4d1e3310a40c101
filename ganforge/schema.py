"""The recipe schema: every core key with its type, default, role and check.

A key's role says what it affects: ``"model"`` keys shape the networks and ``"optim"`` keys the
optimisation, so a resumed run may change neither; keys with no role (steps, logging, paths)
may change on resume. Component tables (``[generator]``, ``[loss]``, ...) list only their core
keys here; their other keys are the registered factory's keyword arguments
(``recipe.validate`` binds them to its signature).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ganforge.errors import did_you_mean
from ganforge.schedules import endpoints

REQUIRED = object()

# What a key affects: "model" keys shape the networks, "optim" keys the optimisation; a resumed
# run may change neither. Keys with no role (steps, logging, paths) may change on resume.
MODEL, OPTIM = "model", "optim"


@dataclass(frozen=True)
class Key:
    """One schema key: its type, default, role and an optional extra check."""

    type: type | tuple[type, ...]
    default: Any = REQUIRED
    role: str | None = None
    check: Callable[[Any], str | None] | None = None
    # May follow a schedule over the images seen (ganforge/schedules.py): a number given as
    # { schedule = ..., start = ..., end = ..., kimg = ... }; in a list, any of its items.
    schedulable: bool = False


def positive(value) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value > 0 else "must be > 0"


def non_negative(value) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value >= 0 else "must be >= 0"


def at_most(limit: int) -> Callable[[Any], str | None]:
    """Positive and at most ``limit`` (a number beyond would exhaust memory, not train)."""

    def check(value):
        return positive(value) or (None if value <= limit else f"must be at most {limit:,}")

    return check


def _plain_text(value) -> str | None:
    """No NUL or other control characters (they cannot be in a file name)."""
    return "must not hold control characters" if any(ord(c) < 32 for c in value) else None


def _own_folder(value) -> str | None:
    if _plain_text(value):
        return _plain_text(value)
    if not value:
        return None
    from pathlib import Path

    here, folder = Path.cwd().resolve(), Path(value).expanduser().resolve()
    if folder == here or folder in here.parents:
        return "must be a folder of its own, not the current folder or one above it"
    return None


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value):
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}"

    return check


def _betas(value) -> str | None:
    ends = [b for item in value for b in endpoints(item)]
    ok = len(value) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in ends)
    return None if ok else "must be two numbers in [0, 1) (or schedules within it)"


OPTIMIZER = {
    "name": Key(str, "adam", OPTIM, one_of("adam", "adamw")),
    "lr": Key(float, 2e-4, OPTIM, positive, schedulable=True),
    "betas": Key(list, [0.5, 0.999], OPTIM, _betas, schedulable=True),
    "eps": Key(float, 1e-8, OPTIM, positive),
    "weight_decay": Key(float, 0.0, OPTIM, non_negative),
    # Linear decay to 0 at lr_decay_steps, its own horizon: train.steps only says when to stop.
    "lr_decay": Key(str, "none", OPTIM, one_of("none", "linear")),
    "lr_decay_start": Key(int, 0, OPTIM, non_negative),
    "lr_decay_steps": Key(int, 0, OPTIM, non_negative),
}

#: Accelerate's experiment trackers (``[run] log_with``); each installs as the package of its name.
TRACKERS = (
    "tensorboard",
    "wandb",
    "mlflow",
    "aim",
    "comet_ml",
    "clearml",
    "dvclive",
    "swanlab",
    "trackio",
)


def _trackers(value) -> str | None:
    for name in value:
        if name not in TRACKERS:
            hint = did_you_mean(str(name), TRACKERS) or f" (one of {', '.join(TRACKERS)})"
            return f"unknown tracker {name!r}{hint}"
    return None if len(set(value)) == len(value) else "names a tracker twice"


def _tracker_options(value) -> str | None:
    for name, options in value.items():
        if name not in TRACKERS:
            return f"unknown tracker {name!r}{did_you_mean(name, TRACKERS)}"
        if not isinstance(options, dict):
            return f"{name} must be a table of that tracker's options"
    return None


#: The largest image side a run (or an export) may have.
MAX_RESOLUTION = 4096

#: Core keys per section. Component sections also take their factory's keyword arguments.
SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "name": Key(str, "ganforge", None, _plain_text),
        "out_dir": Key(str, "", None, _own_folder),
        "seed": Key(int, 0, OPTIM),
        # "bf16_if_native": bf16 where the device runs it natively (GPUs with bf16, CPUs with
        # AVX512-BF16 or AMX), float32 elsewhere (where bf16 would be emulated, many times
        # slower); "auto": the launcher's --mixed_precision.
        "mixed_precision": Key(
            str, "auto", None, one_of("auto", "no", "fp16", "bf16", "bf16_if_native")
        ),
        # Experiment trackers (Accelerate's): every logged value and sample grid goes to them.
        "log_with": Key(list, [], None, _trackers),
        # Per-tracker constructor options: [run.tracker_options.wandb] entity = "me".
        "tracker_options": Key(dict, {}, None, _tracker_options),
    },
    "data": {
        "name": Key(str, REQUIRED, MODEL),
        # Image data needs it; point data (toy 2-D sets) has none and leaves it at 0.
        "resolution": Key(
            int,
            0,
            MODEL,
            lambda v: None if v == 0 or 4 <= v <= MAX_RESOLUTION else "must be in 4..4096",
        ),
        "conditional": Key(bool, False, MODEL),
        # Self-conditioning: condition G and D on k k-means clusters of the samples instead of
        # labels (ganforge/clusters.py); 0 is off.
        "clusters": Key(
            int, 0, MODEL, lambda v: None if v == 0 or 2 <= v <= 10_000 else "must be 0 or 2..10000"
        ),
        # Mirrored copies (left-right) of every image as further samples: twice the data for
        # StyleGAN-style recipes on small sets. The data order covers both; exact on resume.
        "xflip": Key(bool, False, OPTIM),
    },
    "generator": {"name": Key(str, REQUIRED, MODEL)},
    "discriminator": {"name": Key(str, REQUIRED, MODEL)},
    "loss": {
        "name": Key(str, REQUIRED, OPTIM),
        # The adversarial term's weight in G's loss, beside the [regularizers] terms of the G
        # phase (reconstruction, perceptual); 0: none, and no critic at all. `critic_start`:
        # the step the critic begins training and the term is added (before it: no critic
        # work at all, VQGAN's discriminator_iter_start); `adaptive_weight`: the term is also
        # scaled by ||grad L_rest|| / (||grad L_adv|| + 1e-4) at G's last layer, clamped to
        # [0, adaptive_max] (VQGAN's adaptive weight; G names `last_layer`). Named apart from
        # any loss's own options (a loss may take a `weight` or `start` of its own).
        "adversarial_weight": Key(float, 1.0, OPTIM, non_negative, schedulable=True),
        "critic_start": Key(int, 0, OPTIM, non_negative),
        "adaptive_weight": Key(bool, False, OPTIM),
        "adaptive_max": Key(float, 1e4, OPTIM, positive),
    },
    "train": {
        "steps": Key(int, REQUIRED, None, positive),
        "batch_size": Key(int, 64, OPTIM, at_most(1 << 20)),
        "n_critic": Key(int, 1, OPTIM, positive),
        "grad_clip": Key(float, 0.0, OPTIM, non_negative),
        "log_every": Key(int, 50, None, positive),
        "sample_every": Key(int, 500, None, positive),
        "sample_count": Key(int, 64, None, at_most(4096)),
        # Checkpoints every k steps and at the end (0: only at the end); the newest
        # keep_checkpoints are kept (0: all).
        "checkpoint_every": Key(int, 1000, None, non_negative),
        "keep_checkpoints": Key(int, 3, None, non_negative),
        # "auto": continue from the newest checkpoint in the run directory, if any; "never": a
        # new run (an earlier one in the folder is moved aside); or a checkpoint or run folder.
        "resume": Key(str, "auto", None, lambda v: None if v.strip() else "must not be empty"),
        # A checkpoint or run folder whose weights (not optimizer state) a new run starts from,
        # or an export (generator.safetensors): G's (and the EMA's) weights, D fresh.
        "init_from": Key(str, ""),
        # What init_from must match: "all" (every tensor of G and D, as saved, fits this
        # recipe's models) or "matching" (each model takes the tensors whose names and shapes
        # match, e.g. from another architecture; the rest stay freshly initialised).
        "init_keys": Key(str, "all", None, one_of("all", "matching")),
        # Stop (exit status 3) once this many steps in a row were skipped for a non-finite loss
        # or gradient (0: never); read at log and checkpoint steps only.
        "max_skipped_in_a_row": Key(int, 100, None, non_negative),
        # Speed switches (docs/performance.md). channels_last: models and image batches in
        # NHWC memory layout (faster convolutions under bf16/fp16 on tensor-core GPUs).
        "channels_last": Key(bool, False),
        # CUDA only: TF32 (a 10-bit mantissa) for float32 matmuls and convolutions: "on",
        # "off", or "auto", PyTorch's default (convolutions yes, matmuls no); and cuDNN's
        # autotuner (the shapes of a GAN step never change).
        "tf32": Key(str, "auto", None, one_of("auto", "on", "off")),
        "cudnn_benchmark": Key(bool, True),
    },
}
SCHEMA["ema"] = {
    # decay 0 disables the average; sampling and export use it when enabled.
    "decay": Key(
        float,
        0.0,
        OPTIM,
        lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
        schedulable=True,
    ),
    "warmup_steps": Key(int, 0, OPTIM, non_negative),
    # StyleGAN's form instead of `decay`: the average's half-life in thousands of images seen
    # (train.batch_size × n_critic a step), β = 0.5^(images a step / half-life); with
    # `rampup` r > 0 the half-life is at most r × the images seen so far (StyleGAN2: 10 kimg,
    # r = 0.05). 0: off. A function of the step, so a resume recomputes it exactly.
    # R3GAN ramps the half-life itself by a schedule (0 -> 5000 kimg by cosine for CIFAR-10).
    "half_life_kimg": Key(float, 0.0, OPTIM, non_negative, schedulable=True),
    "rampup": Key(float, 0.0, OPTIM, non_negative),
    # Batches of train.batch_size samples that re-estimate the EMA generator's batch-norm
    # statistics for its averaged weights before sample grids, [eval] and the export (BigGAN's
    # standing statistics; 0: the averaged running statistics). Training is unchanged.
    "standing_stats": Key(
        int, 0, None, lambda v: non_negative(v) or (None if v <= 10_000 else "must be <= 10000")
    ),
}
SCHEMA["eval"] = {
    # Metrics every k steps during training (0: never), on `num` generated samples against
    # as many real ones; `extractor` empty: the data source's choice, else by kind of data.
    "every": Key(int, 0, None, non_negative),
    "num": Key(int, 2000, None, lambda v: "must be >= 10" if v < 10 else at_most(10**6)(v)),
    "extractor": Key(str, ""),
}
SCHEMA["input"] = {
    # What an input-taking generator is given for each sample ("": nothing, G(z, y)): a
    # registered input derived from the image (a downscaled copy for super-resolution, the
    # image itself for an autoencoder, a masked copy), [input] name = "downscale", factor = 4.
    "name": Key(str, "", MODEL),
}
SCHEMA["augment"] = {
    # An augmentation applied to every image the critic sees ("": none). Each transform
    # applies to each image with probability p: fixed, or adapted as in ADA (starting from p),
    # moving toward the rate that holds mean(sign(D(real))) at target, every interval steps,
    # by at most 1 per speed_images real images.
    "name": Key(str, "", OPTIM),
    "p": Key(
        float,
        1.0,
        OPTIM,
        lambda v: None if 0 <= v <= 1 else "must be in [0, 1]",
        schedulable=True,
    ),
    "adaptive": Key(bool, False, OPTIM),
    "target": Key(float, 0.6, OPTIM, lambda v: None if 0 < v < 1 else "must be in (0, 1)"),
    "interval": Key(int, 4, OPTIM, positive),
    "speed_images": Key(int, 500_000, OPTIM, positive),
}
SCHEMA["distributed"] = {
    # How each model's update runs across processes (docs/distributed.md). "auto": as the
    # launch says (`accelerate launch --use_deepspeed` -> "deepspeed", `--use_fsdp` -> "fsdp",
    # anything else -> "ddp"); an explicit value must agree with the launcher. "ddp" is one
    # process or DistributedDataParallel; "deepspeed" one DeepSpeed ZeRO engine per model;
    # "fsdp" FSDP2 (fully_shard) on G and on D.
    "backend": Key(str, "auto", None, one_of("auto", "ddp", "deepspeed", "fsdp")),
    # ZeRO stage under "deepspeed": 1 shards optimizer state, 2 also gradients, 3 also
    # parameters; 0: the launcher's `--zero_stage`, else 2.
    "zero_stage": Key(int, 0, None, lambda v: None if 0 <= v <= 3 else "must be 0..3"),
    # Seconds a process waits in a collective for the others (the process group's timeout)
    # before it gives up with a message, instead of hanging on a peer that died or stalled.
    # It must cover the longest a process waits for another: the main process writing a
    # checkpoint, clustering the data, or preparing an evaluation's classifier.
    "timeout": Key(float, 1800.0, None, positive),
}
EVAL_TABLES = ("extractor_options", "metrics")
REGULARIZER_KEYS = {
    "every": Key(int, 1, OPTIM, positive),
    # The first step the term is applied (a reconstruction term's warm-up, a late penalty).
    "start": Key(int, 0, OPTIM, non_negative),
}
#: Core keys of a further critic's table (``[critics.NAME]``); its other keys are the
#: discriminator factory's options, and its tables ``loss``, ``optim`` and ``regularizers``
#: (:data:`CRITIC_TABLES`) its own loss, optimizer settings and D-phase regularizers.
CRITIC_KEYS = {
    "name": Key(str, REQUIRED, MODEL),
    # Its adversarial terms' weight, in D's loss and in G's (the [discriminator]'s is 1).
    "weight": Key(float, 1.0, OPTIM, non_negative),
}
CRITIC_TABLES = ("loss", "optim", "regularizers")
#: What a critic's ``optim`` table may set apart from ``[optim.discriminator]`` (plain values:
#: a schedule or decay of ``optim.discriminator.lr`` scales every critic's lr alike).
CRITIC_OPTIM = {
    k: Key(OPTIMIZER[k].type, None, OPTIM, OPTIMIZER[k].check)
    for k in ("lr", "betas", "eps", "weight_decay")
}
#: Sections whose extra keys go to a registered factory, and the registry kind of each.
COMPONENT_SECTIONS = {
    "data": "dataset",
    "generator": "generator",
    "discriminator": "discriminator",
    "loss": "loss",
    "augment": "augmentation",
    "input": "input",
}
SECTION_ROLES = {
    "data": MODEL,
    "generator": MODEL,
    "discriminator": MODEL,
    "critics": MODEL,
    "loss": OPTIM,
    "augment": OPTIM,
    "input": MODEL,
}
SECTIONS = (
    "run",
    "data",
    "input",
    "generator",
    "discriminator",
    "critics",
    "loss",
    "regularizers",
    "augment",
    "optim",
    "ema",
    "train",
    "eval",
    "distributed",
)
