"""Runs inside launched processes for test_distributed.py: ``python launch_worker.py MODE OUT``.

Each mode trains a tiny run and writes what the test compares into the folder OUT, one file
per rank, so that the test can check every rank's results (not only the main process's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

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


def equivalence(out: Path) -> None:
    """3 steps on the same global reals and latents, whatever the number of processes."""
    trainer = make_trainer(out, *EQUIVALENCE)
    rank, world = trainer.acc.process_index, trainer.acc.num_processes
    draws = iter(range(1_000_000))

    def same_global_latents(n: int) -> torch.Tensor:
        # The latents of the global batch, of which this process takes its shard, as it does
        # for the real images.
        rng = torch.Generator().manual_seed(1000 + next(draws))
        return torch.randn(n * world, *trainer.generator.latent_shape, generator=rng)[rank::world]

    trainer.latents = same_global_latents
    trainer.fit()
    save_file(model_state(trainer), str(out / f"equivalence_{world}_rank{rank}.safetensors"))


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

        trainer.discriminator.register_forward_hook(record)
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
    from ganforge.cli import main
    from ganforge.trainer import Trainer

    sync, save, fit = Trainer.sync_buffers, Trainer.save_checkpoint, Trainer.fit

    def dump(trainer, tag):
        rank = trainer.acc.process_index
        save_file(model_state(trainer), str(out / f"{tag}_rank{rank}.safetensors"))
        if trainer.label_prior is not None:  # data.clusters: the labels this rank trains on
            labels = {"labels": trainer.batches.labels.contiguous()}
            save_file(labels, str(out / f"{tag}_clusters_rank{rank}.safetensors"))

    def recording_sync(trainer):
        dump(trainer, f"before_sync_{trainer.step}")
        sync(trainer)

    def recording_save(trainer):
        path = save(trainer)
        dump(trainer, f"checkpoint_{trainer.step}")
        return path

    def recording_fit(trainer):
        path = fit(trainer)
        dump(trainer, "end")
        return path

    Trainer.sync_buffers, Trainer.save_checkpoint, Trainer.fit = (
        recording_sync,
        recording_save,
        recording_fit,
    )
    root = Path(__file__).resolve().parents[1]
    sys.exit(main([str(root / "recipes" / "quickstart.toml"), *overrides]))


if __name__ == "__main__":
    mode, out, *rest = sys.argv[1:]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    {"equivalence": equivalence, "quickstart": quickstart, "precision": precision}[mode](out, *rest)
    (out / f"{mode}.done").write_text(json.dumps(rest))
