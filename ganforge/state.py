"""The training state a checkpoint holds: what it is, and how it is saved and given back.

Everything a run needs to continue exactly: G, D and EMA weights and buffers, the buffers of
regularizers that keep state (``nn.Module`` regularizers, e.g. a running mean), both
optimizers, the loss scaler, and the :class:`Progress` record (the step, the sampler position,
every process's random streams, the skipped-step counters in all and in a row) with the
augmentation probability and its partial sums. Learning-rate decay and EMA warm-up are
functions of the step, so they need no state of their own.

Saving and restoring work over ``(parts, execution, progress)``: the built components
(``builder.Parts``), the backend that holds the models and optimizers, and the progress
record. They never see the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ganforge.checkpoint import (
    STATE_DIGEST,
    Checkpoint,
    CheckpointError,
    check_resumable,
    find_checkpoint,
    flatten_optimizer,
    load_matching,
    load_module,
    restore_rng,
    resume_target,
    rng_states,
    state_digest,
    strip_prefix,
    unflatten_optimizer,
    warn,
    write_checkpoint,
)
from ganforge.data import ShardedSampler
from ganforge.distributed import agree, broadcast_buffers, decide_together, gather_rank_states
from ganforge.errors import GanforgeError
from ganforge.execution import ROLES, Execution
from ganforge.export import ExportError, read_export, tensors_digest
from ganforge.runfiles import cpu_tensors
from ganforge.stopping import non_finite_weights
from ganforge.streams import stream_seed

if TYPE_CHECKING:
    from pathlib import Path

    from ganforge.builder import Parts
    from ganforge.distributed import Launch
    from ganforge.plugins import Plugins
    from ganforge.recipe import Recipe


@dataclass
class Progress:
    """Where a run is, beside its weights and optimizers: the step, the data order, the
    training latents and the skipped-update counters (device tensors: the step never reads
    them on the host)."""

    step: int
    sampler: ShardedSampler
    latent_rng: torch.Generator
    skipped: torch.Tensor  # updates skipped for a non-finite loss or gradient, in all
    skipped_in_a_row: torch.Tensor  # steps in a row with a skipped update

    @classmethod
    def start(cls, samples: int, batch_size: int, seed: int, accelerator) -> Progress:
        """Step 0 of a new run over ``samples`` samples (the data, twice under data.xflip):
        per-process streams, so that data order and latents differ across processes and
        repeat across runs. Seeds the global stream for training."""
        rank, world, device = (
            accelerator.process_index,
            accelerator.num_processes,
            accelerator.device,
        )
        sampler = ShardedSampler(samples, batch_size, seed, rank, world)
        # On the training device: drawing on the host costs host time every step (a staged
        # copy from pageable memory after it), and a CUDA graph can only capture device draws.
        latent_rng = torch.Generator(device).manual_seed(stream_seed("latents", seed, rank))
        torch.manual_seed(stream_seed("modules", seed, rank))  # dropout, module randomness
        zero = torch.zeros((), device=device)
        return cls(0, sampler, latent_rng, zero, zero.clone())


@dataclass(frozen=True)
class Targets:
    """The checkpoint ``train.resume`` continues, or else the one ``train.init_from`` starts
    from (at most one of the two is set)."""

    resumed: Checkpoint | None
    initial: Checkpoint | None

    @property
    def weights(self) -> Checkpoint | None:
        """Whichever of the two the run's weights (and clusters) come from."""
        return self.resumed or self.initial


def targets(recipe: Recipe) -> Targets:
    """What ``train.resume`` and ``train.init_from`` point at, found before anything is built
    (nothing changes on disk)."""
    train = recipe.section("train")
    resumed = resume_target(train["resume"], recipe.run_dir)
    if resumed is None and train["init_from"]:
        path = Path(train["init_from"])
        if path.suffix == ".safetensors" and path.is_file():
            return Targets(None, ExportWeights.open(path))
        return Targets(None, find_checkpoint(path))
    return Targets(resumed, None)


#: Recipe keys the processes of a launch may hold different values of: where each node finds
#: the data, the run directory and the checkpoints (node-local copies, the same storage
#: mounted elsewhere). The checkpoints themselves are compared by their digests.
PER_NODE_KEYS = ("data.path", "run.out_dir", "train.resume", "train.init_from")


def agree_on_start(recipe: Recipe, plugins: Plugins, launch: Launch, accelerator) -> Targets:
    """*Collective.* :func:`targets`, once every process of the launch agrees on it and on
    what it runs: the resolved recipe (but :data:`PER_NODE_KEYS`), the ganforge, torch and
    plugin versions, the backend and precision, and the checkpoint it continues (step and
    digest). Any difference stops every process at once with one message naming the keys and
    the ranks (a node that sees no checkpoint where another resumes, a node launched with
    other overrides), before anything is built or changed; processes that went on would issue
    different collectives and hang, or train different things silently."""
    found, problem = None, None
    try:
        found = targets(recipe)
    except (GanforgeError, OSError) as err:  # every process says so together, then raises
        problem = err
    if accelerator.num_processes > 1:
        import ganforge
        from ganforge.recipe import flatten

        facts = {
            f"recipe {key}": value
            for key, value in flatten(recipe.tables).items()
            if key not in PER_NODE_KEYS
        }
        facts["ganforge version"] = ganforge.__version__
        facts["torch version"] = torch.__version__
        facts.update({f"plugin {name}": info.version for name, info in plugins.info.items()})
        facts["backend"] = f"{launch.backend} {launch.zero_stage or ''}".strip()
        facts["mixed precision"] = accelerator.mixed_precision
        facts["checkpoint"] = _what_continues(found, problem)
        where = recipe.run_dir.absolute()
        agree(
            accelerator,
            facts,
            hints={
                "checkpoint": f"the run directory ({where} on this process) must be on storage "
                "every node sees, with the same checkpoints"
            },
        )
    if problem is not None:
        raise problem
    return found


def _what_continues(found: Targets | None, problem: Exception | None) -> str:
    """What a process found to continue, as the disagreement message shows it."""
    if problem is not None:
        return f"cannot continue: {problem}"
    for checkpoint, how in ((found.resumed, "resumes"), (found.initial, "starts from")):
        if checkpoint is not None:
            digest = checkpoint.state.get(STATE_DIGEST) or state_digest(checkpoint.state)
            return f"{how} step {checkpoint.step} (checkpoint digest {digest[:12]})"
    return "finds no checkpoint (starts at step 0)"


def sync_buffers(parts: Parts, accelerator) -> None:
    """*Collective.* Give every process the main process's buffers (batch-norm statistics,
    regularizers' running means).

    Buffers are not broadcast during the step (see ``make_accelerator``), so each process's
    running statistics follow its own shard. Before each checkpoint, evaluation and the export
    they are made identical, the same way in every run, so what is saved is every process's
    state.
    """
    copies = [parts.mirror.module] if parts.mirror is not None else []
    broadcast_buffers([*parts.state_modules().values(), *copies], accelerator)


def save_checkpoint(
    parts: Parts,
    execution: Execution,
    progress: Progress,
    *,
    recipe: Recipe,
    launch: Launch,
    export: Callable[[], dict[str, Any]],
) -> Path | None:
    """*Collective.* Write the state as ``checkpoints/step_NNNNNN`` (buffers already synced).

    The main process gathers every process's random states and writes; it returns the
    checkpoint folder there and None elsewhere. ``export()`` gives the metadata an export of
    this checkpoint will carry (called on the main process only).
    """
    acc = execution.acc
    rng = gather_rank_states(rng_states(progress.latent_rng, acc.device), acc)
    # Whole tensors, gathered where the backend shards them (collective: every process).
    whole = {role: execution.model_state(role) for role in ROLES}
    optimizers = {role: execution.optimizer_state(role) for role in ROLES}
    states = {name: whole.get(name) or m.state_dict() for name, m in parts.state_modules().items()}
    _refuse_non_finite(states, progress.step, recipe.run_dir, acc)
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
            "skipped_steps": int(progress.skipped.item()),
            "skipped_in_a_row": int(progress.skipped_in_a_row.item()),
            "sampler": progress.sampler.state_dict(),
            "data_size": len(parts.data),
            "world_size": acc.num_processes,
            "backend": {"name": execution.name, "zero_stage": launch.zero_stage},
            "mixed_precision": acc.mixed_precision,
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "optimizers": optim_json,
            "recipe": recipe.tables,
            "export": export(),
            "augment": parts.augmenter.state_dict() if parts.augmenter else None,
        }
        if progress.sampler.size != len(parts.data):  # data.xflip: the order covers 2N
            state["samples"] = progress.sampler.size
        groups = {"models": models, "optimizers": optim_tensors, "rng": rng}
        if parts.label_prior is not None:  # data.clusters: the clusters trained on
            groups["data"] = {"cluster_labels": torch.from_numpy(parts.data.labels)}
        path = write_checkpoint(
            recipe.run_dir, progress.step, groups, state, keep=recipe.get("train.keep_checkpoints")
        )
    acc.wait_for_everyone()
    return path


def _refuse_non_finite(
    states: dict[str, dict[str, torch.Tensor]], step: int, run_dir: Path, accelerator
) -> None:
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
    if decide_together(float(bool(bad)), accelerator):
        raise non_finite_weights(step, bad or ["on another process"], run_dir)


def load_weights(parts: Parts, targets: Targets, recipe: Recipe, accelerator) -> None:
    """Check the checkpoint that ``train.resume`` continues against this launch and give the
    plain modules its weights (G, D, EMA, regularizers' state), or start from the weights of
    the one ``train.init_from`` names. Called before a backend wraps or shards the modules."""
    checkpoint, source = targets.resumed, targets.initial
    if checkpoint is not None:
        _check_continuable(checkpoint, recipe, accelerator)
        models, where = checkpoint.tensors("models"), checkpoint.path
        for name, module in parts.state_modules().items():
            load_module(module, strip_prefix(models, f"{name}."), f"the {name} weights in {where}")
    elif source is not None:
        _initialise_from(parts, source, recipe.get("train.init_keys"), accelerator)


def _check_continuable(checkpoint: Checkpoint, recipe: Recipe, accelerator) -> None:
    check_resumable(checkpoint.state["recipe"], recipe, checkpoint.path)
    saved_precision = checkpoint.state.get("mixed_precision", accelerator.mixed_precision)
    if saved_precision != accelerator.mixed_precision:
        raise CheckpointError(
            f"{checkpoint.path} was trained with mixed precision {saved_precision!r}, this "
            f"launch uses {accelerator.mixed_precision!r}: set run.mixed_precision = "
            f'"{saved_precision}" (or launch with --mixed_precision {saved_precision})'
        )
    steps = recipe.get("train.steps")
    if checkpoint.step > steps:
        raise CheckpointError(
            f"{checkpoint.path} is at step {checkpoint.step}, past train.steps = "
            f"{steps}: raise train.steps to continue it, or choose another run.out_dir"
        )


class ExportWeights(Checkpoint):
    """An export (``generator.safetensors``) as ``train.init_from`` reads it: G's weights
    (those samples came from: the EMA's where the run kept one) for G and the EMA; no critic,
    no optimizer state, no clusters."""

    @classmethod
    def open(cls, path: Path) -> ExportWeights:
        try:
            tensors, info = read_export(path)
        except ExportError as err:
            raise CheckpointError(f"train.init_from: {err}") from None
        state = {"step": info.step, "recipe": {}, "files": {}}
        state[STATE_DIGEST] = tensors_digest(tensors)
        weights = cls(path, state)
        object.__setattr__(weights, "_tensors", tensors)
        return weights

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        if name != "models":
            return {}
        return {f"generator.{k}": v for k, v in self._tensors.items()}


def _initialise_from(parts: Parts, checkpoint: Checkpoint, keys: str, accelerator) -> None:
    """Start from another run's G, D (and EMA) weights, with fresh optimizers and counters;
    ``keys = "matching"``: each model takes the tensors whose names and shapes match."""
    models, where = checkpoint.tensors("models"), checkpoint.path
    taken = []
    for name, module in (("generator", parts.generator), ("discriminator", parts.discriminator)):
        tensors = strip_prefix(models, f"{name}.")
        if not tensors:  # an export holds no critic: D starts fresh
            taken.append(f"{name}: fresh (none in {where.name})")
        elif keys == "matching":
            count, total = load_matching(module, tensors, f"{name} in {where}")
            taken.append(f"{name}: {count} of {total} tensors")
        else:
            load_module(module, tensors, f"{name} in {where}")
    if parts.ema is not None:
        ema = strip_prefix(models, "ema.") or parts.generator.state_dict()
        if keys == "matching":
            parts.ema.module.load_state_dict(parts.generator.state_dict())
            load_matching(parts.ema.module, ema, f"EMA generator in {where}")
        else:
            load_module(parts.ema.module, ema, f"EMA generator in {where}")
    if taken:
        accelerator.print(f"ganforge: train.init_from {where}: {'; '.join(taken)}")


def restore(
    parts: Parts, execution: Execution, progress: Progress, targets: Targets, seed: int
) -> str:
    """Give the run every piece of state in the checkpoint ``train.resume`` continues but the
    weights, which :func:`load_weights` gave the plain modules (on every process); say what
    happened. Nothing in the run directory changes here."""
    checkpoint = targets.resumed
    if checkpoint is None:
        if targets.initial is not None:
            source = targets.initial
            return f"new run, initialised from the weights of {source.path} (step {source.step})"
        return "new run"
    state, acc = checkpoint.state, execution.acc
    optim = checkpoint.tensors("optimizers")
    for name in ROLES:
        live = {"param_groups": execution.param_groups(name)}  # JSON types back (betas)
        document = state["optimizers"][name]
        saved = unflatten_optimizer(strip_prefix(optim, f"{name}."), document, live)
        execution.load_optimizer_state(name, saved)
    if acc.scaler is not None and state["scaler"] is not None:
        acc.scaler.load_state_dict(state["scaler"])
    progress.sampler.load_state_dict(state["sampler"])
    if state["data_size"] != len(parts.data):
        warn(
            f"the data has {len(parts.data)} samples, the checkpoint's had "
            f"{state['data_size']}: training continues, but not in the original data order"
        )
    _restore_streams(progress, checkpoint, acc, seed)
    progress.skipped.fill_(state["skipped_steps"])
    progress.skipped_in_a_row.fill_(state.get("skipped_in_a_row", 0))  # older: none
    if parts.augmenter is not None and state.get("augment"):
        parts.augmenter.load_state_dict(state["augment"])
    progress.step = checkpoint.step
    return f"resumed from {checkpoint.path} at step {checkpoint.step}"


def _restore_streams(progress: Progress, checkpoint: Checkpoint, accelerator, seed: int) -> None:
    """This process's saved random streams, or new ones from the seed and step where they
    cannot be mapped onto this launch (another number of processes, another device)."""
    rank, world, step = accelerator.process_index, accelerator.num_processes, checkpoint.step
    restart = stream_seed("latents", seed, rank, step)
    if checkpoint.state["world_size"] == world:
        own = strip_prefix(checkpoint.tensors("rng"), f"rank{rank}.")
        if not restore_rng(own, progress.latent_rng, accelerator.device):
            warn(
                f"the checkpoint was written on another kind of device than "
                f"{accelerator.device.type}: the training latents restart from the seed at "
                f"step {step}"
            )
            progress.latent_rng.manual_seed(restart)
        return
    # Per-process streams cannot be mapped onto another number of processes: derive new ones
    # from the seed and step, so the resumed run is still reproducible.
    warn(
        f"the checkpoint was written by {checkpoint.state['world_size']} process(es), this "
        f"launch has {world}: random streams restart from the seed at step {step}"
    )
    progress.latent_rng.manual_seed(restart)
    torch.manual_seed(stream_seed("modules", seed, rank, step))
