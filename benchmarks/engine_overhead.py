"""What ganforge's training loop costs over a plain PyTorch loop, where overhead shows.

A launch-bound tiny model: the toy MLPs (3 hidden layers of 64) on the 25-Gaussians points
at batch 64, the bce loss, n_critic 1, no EMA. Each repetition runs ``--window`` steps of
ganforge's real loop (``Trainer.fit``, with its progress bar, logging checks and non-finite
check; the end-of-run sample plot, checkpoint, export and report are switched off, and the
fixed cost of entering ``fit`` stays in ganforge's time). After each of ganforge's steps, one
step of a plain loop written the way the plain baselines are written (same models, weights,
fused Adam, loss and data) runs and is timed on its own; ganforge's time is the window's wall
time minus the plain steps'. Interleaving step by step exposes both loops to the same machine
state: on the 2-core CPU the speed of either loop alone moves by up to 40% from one second to
the next, which made windows of whole loops, alternated, disagree by ±0.04 in ratio from run
to run. The median repetition of each gives steps/s; ``ratio`` is the median of the
repetitions' ganforge ÷ plain ratios. Target ≥ 0.97, printed last.

    python benchmarks/engine_overhead.py                 # about 1 minute
    python benchmarks/engine_overhead.py --window 2000 --reps 21
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from ganforge.plugins import Plugins
from ganforge.recipe import validate
from ganforge.trainer import Trainer

RECIPE = {
    "run": {"name": "overhead", "seed": 0, "mixed_precision": "no"},
    "data": {"name": "toy2d", "dataset": "25gaussians"},
    "generator": {"name": "mlp", "latent_dim": 2, "hidden": 64, "depth": 3},
    "discriminator": {"name": "mlp", "hidden": 64},
    "loss": {"name": "bce"},
    "train": {
        "steps": 1,
        "batch_size": 64,
        "log_every": 10**9,
        "sample_every": 10**9,
        "checkpoint_every": 0,
        "resume": "never",
    },
}


def ganforge_trainer(out_dir: str) -> Trainer:
    tables = copy.deepcopy(RECIPE)
    tables["run"]["out_dir"] = out_dir
    plugins = Plugins()
    trainer = Trainer(validate(tables, plugins.registry), plugins)
    # Per-run work that is not per-step: the final sample plot, checkpoint, export and report.
    trainer.outputs.save_samples = trainer.outputs.export = lambda step: None
    trainer.outputs.write_report = lambda: None
    trainer.save_checkpoint = lambda: None
    return trainer


class PlainLoop:
    """The loop of the plain baselines: sample, D step, G step (same models and settings)."""

    def __init__(self, trainer: Trainer):
        self.G = copy.deepcopy(trainer.generator)
        self.D = copy.deepcopy(trainer.discriminator)
        config = trainer.recipe.section("optim")
        self.opt_g = torch.optim.Adam(
            self.G.parameters(), config["generator"]["lr"], betas=(0.5, 0.999), fused=True
        )
        self.opt_d = torch.optim.Adam(
            self.D.parameters(), config["discriminator"]["lr"], betas=(0.5, 0.999), fused=True
        )
        self.data = torch.from_numpy(trainer.parts.data.images.copy())
        self.batch, self.latent = trainer.batch_size, trainer.generator.latent_shape[0]
        self.ones, self.zeros = torch.ones(self.batch), torch.zeros(self.batch)

    def step(self) -> None:
        real = self.data[torch.randint(0, len(self.data), (self.batch,))]
        fake = self.G(torch.randn(self.batch, self.latent))
        d_real, d_fake = self.D(real).logits.flatten(), self.D(fake.detach()).logits.flatten()
        loss_d = F.binary_cross_entropy_with_logits(
            d_real, self.ones
        ) + F.binary_cross_entropy_with_logits(d_fake, self.zeros)
        self.opt_d.zero_grad()
        loss_d.backward()
        self.opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(self.D(fake).logits.flatten(), self.ones)
        self.opt_g.zero_grad()
        loss_g.backward()
        self.opt_g.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=1000, help="steps per repetition")
    parser.add_argument("--reps", type=int, default=11, help="repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as out:
        trainer = ganforge_trainer(out)
        plain = PlainLoop(trainer)
        ganforge_step, plain_s = trainer.train_step, [0.0]

        def interleaved(step: int, **kwargs):
            result = ganforge_step(step, **kwargs)
            start = time.perf_counter()
            plain.step()
            plain_s[0] += time.perf_counter() - start
            return result

        trainer.train_step = interleaved
        trainer.steps = 0
        times: dict[str, list[float]] = {"ganforge": [], "plain": []}
        for rep in range(args.reps + 1):  # the first repetition warms up
            trainer.steps += args.window
            plain_s[0] = 0.0
            start = time.perf_counter()
            trainer.fit()
            ganforge_s = time.perf_counter() - start - plain_s[0]
            if rep:
                times["ganforge"].append(args.window / ganforge_s)
                times["plain"].append(args.window / plain_s[0])

    rate = {name: statistics.median(values) for name, values in times.items()}
    print(f"threads {args.threads}, {args.reps} repetitions of {args.window} interleaved steps")
    for name, values in times.items():
        low, high = min(values), max(values)
        print(f"{name:>8}: median {rate[name]:8.1f} steps/s (range {low:.1f}-{high:.1f})")
    pairs = [g / p for g, p in zip(times["ganforge"], times["plain"], strict=True)]
    print(f"repetitions' ratios {min(pairs):.3f}-{max(pairs):.3f}")
    print(f"ratio {statistics.median(pairs):.3f}")


if __name__ == "__main__":
    main()
