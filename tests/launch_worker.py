"""Runs inside launched processes for test_distributed.py: ``python launch_worker.py MODE OUT``.

Each mode trains a tiny run and writes what the test compares into the folder OUT, one file
per rank, so that the test can check every rank's results (not only the main process's).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from conftest import make_trainer  # noqa: E402

# Batch-norm-free models (MLPs on points), no dropout and no random penalty, so one process
# and two processes see the same computation when they see the same global batch.
EQUIVALENCE = (
    "data={name='toy2d', dataset='8gaussians', size=64}",
    "generator={name='mlp', hidden=16, latent_dim=4}",
    "discriminator={name='mlp', hidden=16}",
    "loss.name=hinge",
    "regularizers.r1.gamma=1.0",
    "train.n_critic=2",
    "train.steps=3",
    "train.checkpoint_every=0",
    "ema.decay=0.5",
    "eval.every=3",  # at the end: each process generates its share, the main one scores
    "eval.num=40",
)


def model_state(trainer) -> dict[str, torch.Tensor]:
    modules = {"generator": trainer.generator, "discriminator": trainer.discriminator}
    if trainer.ema is not None:
        modules["ema"] = trainer.ema.module
    return {
        f"{name}.{k}": v.detach().cpu().clone().contiguous()
        for name, module in modules.items()
        for k, v in module.state_dict().items()
    }


def use_global_latents(trainer) -> None:
    """Latents drawn for the global batch, of which each process takes its shard as it does
    for the real images, and keyed by step: the same whatever the number of processes, and
    the same after a resume."""
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    calls = {"step": -1, "k": 0}

    def same_global_latents(n: int) -> torch.Tensor:
        if calls["step"] != trainer.step:
            calls.update(step=trainer.step, k=0)
        calls["k"] += 1
        rng = torch.Generator().manual_seed(1000 + 16 * trainer.step + calls["k"])
        return torch.randn(n * world, *trainer.generator.latent_shape, generator=rng)[rank::world]

    trainer.latents = same_global_latents


class _GlobalRand:
    """``torch`` for the gradient penalty's module, whose ``rand`` (the interpolation points)
    draws for the global batch and keeps this process's rows, keyed by step and call."""

    def __init__(self, trainer):
        self.trainer, self.calls = trainer, {"step": -1, "k": 0}

    def rand(self, shape, device=None):
        trainer, calls = self.trainer, self.calls
        rank, world = trainer.acc.process_index, trainer.acc.num_processes
        if calls["step"] != trainer.step:
            calls.update(step=trainer.step, k=0)
        calls["k"] += 1
        rng = torch.Generator().manual_seed(5000 + 16 * trainer.step + calls["k"])
        whole = torch.rand((shape[0] * world, *shape[1:]), generator=rng)
        return whole[rank::world].to(device)

    def __getattr__(self, name):
        return getattr(torch, name)


def use_global_randomness(trainer) -> None:
    """The latents and the gradient penalty's points of the global batch (see above)."""
    import ganforge_plugins.regularizers as regularizers

    use_global_latents(trainer)
    regularizers.torch = _GlobalRand(trainer)


def equivalence(out: Path) -> None:
    """3 steps on the same global reals and latents, whatever the number of processes."""
    trainer = make_trainer(out, *EQUIVALENCE)
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    use_global_latents(trainer)
    trainer.fit()
    save_file(model_state(trainer), str(out / f"equivalence_{world}_rank{rank}.safetensors"))


#: An input-taking run: 4× super-resolution of 16-px synthetic images (a U-Net, the built-in
#: patch critic conditioned on the input, L1 and the adversarial term with VQGAN's adaptive
#: weight from step 1); nothing random beyond the data order.
PAIRED = (
    "data={name='synthetic', resolution=16, channels=1, size=64}",
    "input={name='downscale', factor=4}",
    "generator={name='unet', width=4, depth=1}",
    "discriminator={name='patch', width=4, layers=1}",
    "loss={name='hinge', adaptive_weight=true, critic_start=1}",
    "regularizers.reconstruction.weight=1.0",
    "train.steps=3",
    "train.checkpoint_every=0",
)


def paired(out: Path) -> None:
    """3 steps of :data:`PAIRED` on the same global batches, whatever the number of processes."""
    trainer = make_trainer(out, *PAIRED)
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    trainer.fit()
    save_file(model_state(trainer), str(out / f"paired_{world}_rank{rank}.safetensors"))


#: Two critics on the 1-D toy (tests/test_critics.py's SIGNALS): a period critic, a scale
#: critic with its own weight, lr, betas and R1, LSGAN and feature matching; nothing random
#: beyond the data order and the latents.
CRITICS = (
    "data={name='signals', length=32, size=64}",
    "generator={name='mlp', hidden=16, latent_dim=4}",
    "discriminator={name='signal_period', periods=[2, 3], width=4, layers=2}",
    "critics.scale={name='signal_scale', scales=2, width=4, layers=2, weight=0.5, "
    "optim={lr=1e-3, betas=[0.0, 0.9]}, regularizers={r1={gamma=1.0}}}",
    "loss.name=lsgan",
    "regularizers.feature_matching.weight=1.0",
    "train.steps=3",
    "train.checkpoint_every=0",
    "eval.every=0",
)


def critics(out: Path, *overrides: str) -> None:
    """3 steps of :data:`CRITICS` on the same global batches and latents, under the launch's
    backend (``overrides`` may name one), whatever the number of processes: every rank
    records the whole models and optimizer state."""
    trainer = make_trainer(out, *CRITICS, *overrides)
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    use_global_latents(trainer)
    trainer.fit()
    state = full_state(trainer)
    (out / f"critics_{world}_rank{rank}.json").write_text(json.dumps(trainer.backend_name))
    save_file(state, str(out / f"critics_{world}_rank{rank}.safetensors"))


#: The backend checks' recipe: EQUIVALENCE with a gradient penalty beside R1 (n_critic 2, EMA),
#: gradients clipped (train.grad_clip: ganforge's clipping, whichever backend), a checkpoint
#: every 2 steps and no evaluation.
BACKEND = (
    *EQUIVALENCE,
    "regularizers.gradient_penalty.weight=1.0",
    "train.grad_clip=0.5",
    "train.checkpoint_every=2",
    "eval.every=0",
)


def full_state(trainer) -> dict[str, torch.Tensor]:
    """Models and both optimizers' tensors, whole (collective under a sharding backend)."""
    from ganforge.checkpoint import flatten_optimizer

    state = {}
    if trainer.ema is not None:
        state.update(
            {f"ema.{k}": v.cpu().clone() for k, v in trainer.ema.module.state_dict().items()}
        )
    for role in ("generator", "discriminator"):
        whole = trainer.execution.model_state(role)  # G and D gathered where sharded
        state.update({f"{role}.{k}": v.cpu().clone().contiguous() for k, v in whole.items()})
        tensors, _ = flatten_optimizer(trainer.execution.optimizer_state(role), f"opt.{role}.")
        state.update(tensors)
    return state


def backend_recipe(overrides) -> tuple[str, ...]:
    """BACKEND, without its penalties when the overrides say ``penalties=none`` (ZeRO-3)."""
    if "penalties=none" not in overrides:
        return (*BACKEND, *overrides)
    kept = [o for o in BACKEND if not o.startswith("regularizers.")]
    return (*kept, *(o for o in overrides if o != "penalties=none"))


def train_for(out: Path, steps: int, *overrides: str, poison_at: int | None = None):
    """A BACKEND run to ``steps`` (resuming what ``out`` holds); ``poison_at``: the last rank's
    real batch of that critic update (0-based, all steps counted) is NaN."""
    trainer = make_trainer(out, *backend_recipe(overrides), f"train.steps={steps}")
    use_global_randomness(trainer)
    if poison_at is not None and trainer.acc.process_index == trainer.acc.num_processes - 1:
        draw, calls = trainer.batches.next, iter(range(1_000_000))

        def poisoned(with_labels=False):
            real, y = draw(with_labels=with_labels)
            return (torch.full_like(real, float("nan")) if next(calls) == poison_at else real), y

        trainer.batches.next = poisoned
    try:
        trainer.fit()
    finally:
        import ganforge_plugins.regularizers as regularizers

        regularizers.torch = torch
    return trainer


def backend(out: Path, reference: str, *overrides: str) -> None:
    """Under the launch's backend: 4 straight steps; 2 steps, then resumed to 4; 3 steps with a
    poisoned batch on the last rank; and the reference checkpoint (another backend, one
    process) loaded here. Each rank records what the test compares."""
    straight = train_for(out / "straight", 4, *overrides)
    rank, world = straight.acc.process_index, straight.acc.num_processes
    tag = f"{world}_rank{rank}"
    save_file(full_state(straight), str(out / f"straight_{tag}.safetensors"))
    train_for(out / "resumed", 2, *overrides)
    resumed = train_for(out / "resumed", 4, *overrides)
    save_file(full_state(resumed), str(out / f"resumed_{tag}.safetensors"))
    poisoned = train_for(out / "poison", 3, *overrides, poison_at=2)
    save_file(full_state(poisoned), str(out / f"poison_{tag}.safetensors"))
    # Without an EMA, the export (written by the main process alone) is G as it ended.
    no_ema = train_for(out / "no_ema", 2, *overrides, "ema.decay=0")
    whole_g = no_ema.execution.model_state("generator")
    if no_ema.acc.is_main_process:
        save_file(
            {k: v.cpu().contiguous() for k, v in whole_g.items()}, str(out / "no_ema_g.safetensors")
        )
    resume = ("train.steps=2", f"train.resume={reference}")
    loaded = make_trainer(out / "loaded", *backend_recipe(overrides), *resume)
    save_file(full_state(loaded), str(out / f"loaded_{tag}.safetensors"))
    runs = (straight, resumed, poisoned, no_ema, loaded)
    info = {"backends": sorted({r.backend_name for r in runs})}
    info["skipped"] = int(poisoned.progress.skipped.item())
    (out / f"info_{tag}.json").write_text(json.dumps(info))


LOSSES = ("bce", "minimax", "lsgan", "wgan", "hinge", "rsgan", "rahinge")
REGULARIZERS = {
    "gradient_penalty": "regularizers.gradient_penalty.weight=1.0",
    "r1": "regularizers.r1.gamma=1.0",
    "r2": "regularizers.r2.gamma=1.0",
    "consistency": "regularizers.consistency.weight=1.0",
}


def precision(out: Path, mixed_precision: str) -> None:
    """Every loss, and every regularizer, for 3 steps under ``mixed_precision``: records the
    input and output dtypes of each critic pass, losses, skipped steps and the scaler."""
    runs = {f"loss={loss}": [f"loss.name={loss}"] for loss in LOSSES}
    runs |= {f"reg={name}": ["loss.name=wgan", option] for name, option in REGULARIZERS.items()}
    results = {}
    for name, overrides in runs.items():
        trainer = make_trainer(
            out / name,
            *overrides,
            f"run.mixed_precision={mixed_precision}",
            "train.steps=3",
            "train.checkpoint_every=0",
            "discriminator.dropout=0.1",  # the consistency term perturbs D with dropout
        )
        passes = []

        def record(module, args, output, passes=passes):
            logits = output.logits if hasattr(output, "logits") else output
            passes.append([str(args[0].dtype), str(logits.dtype)])

        # The critic's first layer: what autocast runs it in (Accelerate hands the critic's
        # outputs back in float32, whatever ran inside).
        first = next(m for m in trainer.discriminator.modules() if isinstance(m, nn.Conv2d))
        first.register_forward_hook(record)
        before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
        trainer.fit()
        last = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        results[name] = {
            "passes": sorted({tuple(p) for p in passes}),
            "d_loss": last["d_loss"],
            "g_loss": last["g_loss"],
            "skipped": last["skipped_steps"],
            "g_changed": any(
                not torch.equal(v, trainer.generator.state_dict()[k]) for k, v in before.items()
            ),
            "scaler": trainer.acc.scaler is not None,
            "device": str(trainer.acc.device),
        }
    (out / f"precision_{mixed_precision}.json").write_text(json.dumps(results, indent=1))


def quickstart(out: Path, *overrides: str) -> None:
    """The quickstart through the CLI, recording every rank's models at each checkpoint and
    at the end, and each rank's batch-norm statistics just before they are synchronised."""
    from ganforge import state
    from ganforge.cli import main
    from ganforge.trainer import Trainer

    sync, save, fit = state.sync_buffers, Trainer.save_checkpoint, Trainer.fit
    running = []  # the trainer of this process, once it fits

    def dump(trainer, tag):
        rank = trainer.acc.process_index
        save_file(model_state(trainer), str(out / f"{tag}_rank{rank}.safetensors"))
        if trainer.parts.label_prior is not None:  # data.clusters: the labels this rank trains on
            labels = {"labels": trainer.batches.labels.contiguous()}
            save_file(labels, str(out / f"{tag}_clusters_rank{rank}.safetensors"))

    def recording_sync(parts, accelerator):
        dump(running[0], f"before_sync_{running[0].step}")
        sync(parts, accelerator)

    def recording_save(trainer):
        path = save(trainer)
        dump(trainer, f"checkpoint_{trainer.step}")
        return path

    def recording_fit(trainer):
        running.append(trainer)
        path = fit(trainer)
        dump(trainer, "end")
        return path

    state.sync_buffers, Trainer.save_checkpoint, Trainer.fit = (
        recording_sync,
        recording_save,
        recording_fit,
    )
    root = Path(__file__).resolve().parents[1]
    status = main([str(root / "recipes" / "quickstart.toml"), *overrides])
    if status:
        sys.exit(status)


def bf16(out: Path, *overrides: str) -> None:
    """4 BACKEND steps under bf16 autocast; each rank records its whole state."""
    trainer = train_for(out / "bf16", 4, "run.mixed_precision=bf16", *overrides)
    tag = f"{trainer.acc.num_processes}_rank{trainer.acc.process_index}"
    save_file(full_state(trainer), str(out / f"bf16_{tag}.safetensors"))


def refuse_unpickling() -> None:
    """As the ``no_unpickling`` fixture does in the test process: any unpickling in this
    process fails it (pickle's loaders and Unpickler, torch.load, and an audit hook on
    ``pickle.find_class`` for unpicklers made before this call)."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    class RefusingUnpickler(pickle.Unpickler):
        def __init__(self, *args, **kwargs):
            refuse()

    pickle.load = pickle.loads = refuse
    pickle.Unpickler = pickle._Unpickler = RefusingUnpickler
    torch.load = torch.serialization.load = refuse
    sys.addaudithook(lambda event, args: refuse() if event == "pickle.find_class" else None)


if __name__ == "__main__":
    mode, out, *rest = sys.argv[1:]
    shared_group = False
    if mode in ("backend", "bf16", "critics"):  # DeepSpeed and FSDP2 run with unpickling refused
        refuse_unpickling()
        from accelerate import Accelerator

        # Several runs in one process share its process group (and DeepSpeed's view of it),
        # and results are gathered after a run: the group ends once, after everything.
        Accelerator.end_training, shared_group = (lambda self: None), True
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    modes = {
        "equivalence": equivalence,
        "paired": paired,
        "critics": critics,
        "quickstart": quickstart,
        "precision": precision,
        "backend": backend,
        "bf16": bf16,
    }
    modes[mode](out, *rest)
    if shared_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    (out / f"{mode}.done").write_text(json.dumps(rest))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from ganforge.cli import exit_launched

        exit_launched(0)
