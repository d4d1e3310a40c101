"""What ganforge's training loop costs over a plain PyTorch loop, where overhead shows.

A launch-bound tiny model: the toy MLPs (3 hidden layers of 64) on the 25-Gaussians points
at batch 64, the bce loss, n_critic 1, no EMA. Each repetition runs ``--window`` steps of
ganforge's real loop (``Trainer.fit``, with its progress bar, logging checks and
non-finite check; the end-of-run sample plot, checkpoint and export are switched off, and the
fixed cost of entering ``fit`` stays in ganforge's time) and then the same number of steps of
a plain loop written the way the plain baselines are written (same models, weights, fused Adam,
loss and data). The two alternate, and the median window of each gives steps/s; ``ratio`` is
ganforge ÷ plain (target ≥ 0.97), printed last.

    python benchmarks/engine_overhead.py                 # about 1 minute
    python benchmarks/engine_overhead.py --window 500 --reps 15
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
    # Per-run work that is not per-step: the final sample plot, checkpoint and export.
    trainer.save_samples = trainer.save_checkpoint = trainer.export = lambda: None
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
        self.data = torch.from_numpy(trainer.data.images.copy())
        self.batch, self.latent = trainer.batch_size, trainer.generator.latent_shape[0]

    def run(self, steps: int) -> None:
        ones = torch.ones(self.batch)
        zeros = torch.zeros(self.batch)
        for _ in range(steps):
            real = self.data[torch.randint(0, len(self.data), (self.batch,))]
            fake = self.G(torch.randn(self.batch, self.latent))
            d_real, d_fake = self.D(real).logits.flatten(), self.D(fake.detach()).logits.flatten()
            loss_d = F.binary_cross_entropy_with_logits(
                d_real, ones
            ) + F.binary_cross_entropy_with_logits(d_fake, zeros)
            self.opt_d.zero_grad()
            loss_d.backward()
            self.opt_d.step()
            loss_g = F.binary_cross_entropy_with_logits(self.D(fake).logits.flatten(), ones)
            self.opt_g.zero_grad()
            loss_g.backward()
            self.opt_g.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=300, help="steps per repetition")
    parser.add_argument("--reps", type=int, default=11, help="repetitions of each loop")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as out:
        trainer = ganforge_trainer(out)
        plain = PlainLoop(trainer)
        trainer.steps = 0
        times: dict[str, list[float]] = {"ganforge": [], "plain": []}
        for rep in range(args.reps + 1):  # the first repetition of each warms up
            trainer.steps += args.window
            start = time.perf_counter()
            trainer.fit()
            ganforge_s = time.perf_counter() - start
            start = time.perf_counter()
            plain.run(args.window)
            plain_s = time.perf_counter() - start
            if rep:
                times["ganforge"].append(args.window / ganforge_s)
                times["plain"].append(args.window / plain_s)

    rate = {name: statistics.median(values) for name, values in times.items()}
    print(f"threads {args.threads}, window {args.window} steps, {args.reps} repetitions each")
    for name, values in times.items():
        low, high = min(values), max(values)
        print(f"{name:>8}: median {rate[name]:8.1f} steps/s (range {low:.1f}-{high:.1f})")
    print(f"ratio {rate['ganforge'] / rate['plain']:.3f}")


if __name__ == "__main__":
    main()
