"""The training state a checkpoint holds, taken from and given back to a :class:`Trainer`.

Everything a run needs to continue exactly: G, D and EMA weights and buffers, the buffers of
regularizers that keep state (``nn.Module`` regularizers, e.g. a running mean), both
optimizers, the loss scaler, the step, the sampler position, every process's random streams,
the skipped-step counters (in all, and in a row) and the augmentation probability with its
partial sums.
Learning-rate decay and EMA warm-up are functions of the step, so they need no state of their
own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ganforge.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_resumable,
    find_checkpoint,
    flatten_optimizer,
    list_checkpoints,
    load_module,
    restore_rng,
    resume_target,
    rng_states,
    set_aside,
    set_aside_newer,
    strip_prefix,
    unflatten_optimizer,
    warn,
    write_checkpoint,
)
from ganforge.distributed import gather_rank_states
from ganforge.execution import ROLES
from ganforge.runfiles import cpu_tensors
from ganforge.stopping import non_finite_weights

if TYPE_CHECKING:
    from pathlib import Path

    from ganforge.trainer import Trainer


def modules(trainer: Trainer) -> dict[str, nn.Module]:
    """Every module whose parameters and buffers are training state, by checkpoint prefix: G,
    D, the EMA generator, and each regularizer that keeps state (an ``nn.Module``)."""
    found = {"generator": trainer.generator, "discriminator": trainer.discriminator}
    if trainer.ema is not None:
        found["ema"] = trainer.ema.module
    for name, _, regularizer in trainer.regularizers:
        if isinstance(regularizer, nn.Module):
            found[f"regularizers.{name}"] = regularizer
    return found


def save_checkpoint(trainer: Trainer) -> Path | None:
    """Write the trainer's state as ``checkpoints/step_NNNNNN``; called on every process.

    The main process gathers every process's random states and writes; it returns the
    checkpoint folder there and None elsewhere.
    """
    acc, execution = trainer.acc, trainer.execution
    rng = gather_rank_states(rng_states(trainer.latent_rng, acc.device), acc)  # collective
    # Whole tensors, gathered where the backend shards them (collective: every process).
    whole = {role: execution.model_state(role) for role in ROLES}
    optimizers = {role: execution.optimizer_state(role) for role in ROLES}
    states = {name: whole.get(name) or m.state_dict() for name, m in modules(trainer).items()}
    _refuse_non_finite(trainer, states)
    path = None
    if acc.is_main_process:
        models: dict[str, torch.Tensor] = {}
        for name, module_state in states.items():
            models.update(cpu_tensors(module_state, f"{name}."))
        optim_tensors, optim_json = {}, {}
        for name, optimizer_state in optimizers.items():
            tensors, document = flatten_optimizer(optimizer_state, f"{name}.")
            optim_tensors.update(tensors)
            optim_json[name] = document
        state = {
            "skipped_steps": int(trainer.skipped.item()),
            "skipped_in_a_row": int(trainer.skipped_in_a_row.item()),
            "sampler": trainer.sampler.state_dict(),
            "data_size": len(trainer.data),
            "world_size": acc.num_processes,
            "backend": {"name": execution.name, "zero_stage": trainer.launch.zero_stage},
            "mixed_precision": acc.mixed_precision,
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "optimizers": optim_json,
            "recipe": trainer.recipe.tables,
            "export": trainer.export_metadata(),
            "augment": trainer.augmenter.state_dict() if trainer.augmenter else None,
        }
        groups = {"models": models, "optimizers": optim_tensors, "rng": rng}
        if trainer.label_prior is not None:  # data.clusters: the clusters trained on
            groups["data"] = {"cluster_labels": torch.from_numpy(trainer.data.labels)}
        path = write_checkpoint(
            trainer.run_dir,
            trainer.step,
            groups,
            state,
            keep=trainer.recipe.get("train.keep_checkpoints"),
        )
    acc.wait_for_everyone()
    return path


def _refuse_non_finite(trainer: Trainer, states: dict[str, dict[str, torch.Tensor]]) -> None:
    """Never checkpoint weights that are not finite: the newest checkpoint must stay the last
    good state. Decided together (every process holds the whole state here)."""
    named = [
        (f"{name}.{key}", value)
        for name, state in states.items()
        for key, value in state.items()
        if value.is_floating_point()
    ]
    finite = torch.stack([torch.isfinite(v).all().to(v.device) for _, v in named]).tolist()
    bad = [name for (name, _), ok in zip(named, finite, strict=True) if not ok]
    flag = torch.tensor(float(bool(bad)), device=trainer.acc.device)
    if trainer.acc.num_processes > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    if flag.item():
        raise non_finite_weights(trainer.step, bad or ["on another process"], trainer.run_dir)


def restore(trainer: Trainer, checkpoint: Checkpoint) -> None:
    """Give the trainer every piece of state in ``checkpoint`` but the weights, which
    :func:`load_weights` gave the plain modules (on every process)."""
    state, execution = checkpoint.state, trainer.execution
    optim = checkpoint.tensors("optimizers")
    for name in ROLES:
        live = {"param_groups": execution.param_groups(name)}  # JSON types back (betas)
        document = state["optimizers"][name]
        saved = unflatten_optimizer(strip_prefix(optim, f"{name}."), document, live)
        execution.load_optimizer_state(name, saved)
    if trainer.acc.scaler is not None and state["scaler"] is not None:
        trainer.acc.scaler.load_state_dict(state["scaler"])
    trainer.sampler.load_state_dict(state["sampler"])
    if state["data_size"] != len(trainer.data):
        warn(
            f"the data has {len(trainer.data)} samples, the checkpoint's had "
            f"{state['data_size']}: training continues, but not in the original data order"
        )
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    reseed = rank + 1 + checkpoint.step * 104729
    if state["world_size"] == world:
        own = strip_prefix(checkpoint.tensors("rng"), f"rank{rank}.")
        if not restore_rng(own, trainer.latent_rng, trainer.acc.device):
            warn(
                f"the checkpoint was written on another kind of device than "
                f"{trainer.acc.device.type}: the training latents restart from the seed at "
                f"step {checkpoint.step}"
            )
            trainer.latent_rng.manual_seed(trainer.seed * 7919 + reseed)
    else:
        # Per-process streams cannot be mapped onto another number of processes: derive new
        # ones from the seed and step, so the resumed run is still reproducible.
        warn(
            f"the checkpoint was written by {state['world_size']} process(es), this launch has "
            f"{world}: random streams restart from the seed at step {checkpoint.step}"
        )
        trainer.latent_rng.manual_seed(trainer.seed * 7919 + reseed)
        torch.manual_seed(trainer.seed + rank + checkpoint.step * 104729)
    trainer.skipped.fill_(state["skipped_steps"])
    trainer.skipped_in_a_row.fill_(state.get("skipped_in_a_row", 0))  # older checkpoints: none
    if trainer.augmenter is not None and state.get("augment"):
        trainer.augmenter.load_state_dict(state["augment"])
    trainer.step = checkpoint.step


def targets(trainer: Trainer) -> tuple[Checkpoint | None, Checkpoint | None]:
    """The checkpoint ``train.resume`` continues, or else the one ``train.init_from`` starts
    from (at most one of the two)."""
    train = trainer.recipe.section("train")
    resumed = resume_target(train["resume"], trainer.run_dir)
    if resumed is None and train["init_from"]:
        return None, find_checkpoint(train["init_from"])
    return resumed, None


def saved_clusters(checkpoint: Checkpoint | None, k: int, size: int) -> np.ndarray | None:
    """The clusters a run on ``data.clusters = k`` trained on, from its checkpoint, when they
    fit this data: a resume (or ``init_from``) continues on them, where k-means run again
    (another CPU, another scikit-learn) could number or split them differently."""
    if checkpoint is None or "data.safetensors" not in checkpoint.state.get("files", {}):
        return None
    if checkpoint.state["recipe"].get("data", {}).get("clusters") != k:
        return None
    labels = checkpoint.tensors("data")["cluster_labels"]
    if len(labels) != size:
        warn(f"the data changed size since {checkpoint.path}: its clusters are computed again")
        return None
    return labels.numpy()


def load_weights(trainer: Trainer) -> None:
    """Check the checkpoint that ``train.resume`` continues against this launch and give the
    plain modules its weights (G, D, EMA, regularizers' state), or start from the weights of
    the one ``train.init_from`` names. Called before a backend wraps or shards the modules."""
    checkpoint, source = trainer.targets
    if checkpoint is not None:
        _check_continuable(trainer, checkpoint)
        models, where = checkpoint.tensors("models"), checkpoint.path
        for name, module in modules(trainer).items():
            load_module(module, strip_prefix(models, f"{name}."), f"the {name} weights in {where}")
    elif source is not None:
        initialise_from(trainer, source)


def _check_continuable(trainer: Trainer, checkpoint: Checkpoint) -> None:
    acc = trainer.acc
    check_resumable(checkpoint.state["recipe"], trainer.recipe, checkpoint.path)
    saved_precision = checkpoint.state.get("mixed_precision", acc.mixed_precision)
    if saved_precision != acc.mixed_precision:
        raise CheckpointError(
            f"{checkpoint.path} was trained with mixed precision {saved_precision!r}, this "
            f"launch uses {acc.mixed_precision!r}: set run.mixed_precision = "
            f'"{saved_precision}" (or launch with --mixed_precision {saved_precision})'
        )
    if checkpoint.step > trainer.steps:
        raise CheckpointError(
            f"{checkpoint.path} is at step {checkpoint.step}, past train.steps = "
            f"{trainer.steps}: raise train.steps to continue it, or choose another run.out_dir"
        )


def initialise_from(trainer: Trainer, checkpoint: Checkpoint) -> None:
    """Start from another run's G, D (and EMA) weights, with fresh optimizers and counters."""
    models, where = checkpoint.tensors("models"), checkpoint.path
    load_module(trainer.generator, strip_prefix(models, "generator."), f"generator in {where}")
    load_module(
        trainer.discriminator, strip_prefix(models, "discriminator."), f"discriminator in {where}"
    )
    if trainer.ema is not None:
        ema = strip_prefix(models, "ema.") or trainer.generator.state_dict()
        load_module(trainer.ema.module, ema, f"EMA generator in {where}")


def start(trainer: Trainer) -> str:
    """Apply ``train.resume`` / ``train.init_from`` to a new trainer; say what happened.
    Nothing in the run directory changes here: :func:`take_run_dir` does that, in ``fit``."""
    checkpoint, source = trainer.targets  # found before anything was built from the data
    if checkpoint is not None:
        restore(trainer, checkpoint)
        return f"resumed from {checkpoint.path} at step {checkpoint.step}"
    if source is not None:
        return f"new run, initialised from the weights of {source.path} (step {source.step})"
    return "new run"


def take_run_dir(trainer: Trainer) -> str:
    """What a run changes in its directory before training, once it holds its lock: with
    ``train.resume = "never"`` an earlier run is moved aside; a resumed run sets aside the
    checkpoints past the one it continues. Returns what to add to the start message."""
    acc, checkpoint = trainer.acc, trainer.targets[0]
    note = ""
    # Every process is past its own look at the folder before the main one renames anything.
    acc.wait_for_everyone()
    if acc.is_main_process:
        never = trainer.recipe.get("train.resume") == "never"
        if never and list_checkpoints(trainer.run_dir):
            note = f"; the earlier run was moved to {set_aside(trainer.run_dir, 'before')}"
        if checkpoint is not None:
            for moved in set_aside_newer(checkpoint, trainer.run_dir):
                warn(f"resuming from step {checkpoint.step}: set aside {moved}")
    acc.wait_for_everyone()
    return note
