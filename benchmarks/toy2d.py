"""Toy 2-D benchmark: modes covered and high-quality fraction over CPU time.

Trains ganforge toy recipes in-process, scoring 10,000 samples (from the EMA generator when the
recipe enables it, else G) at fixed elapsed times with the evaluation time excluded, and runs
the plain WGAN-GP loop `../shared/baselines/toy_wgan_gp_plain.py` for the same budget.

  python benchmarks/toy2d.py --budget 300 recipes/toy_25gaussians_*.toml --baseline

Prints a markdown table last: one row per method and checkpoint time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ganforge.plugins import Plugins
from ganforge.recipe import load_recipe
from ganforge.runfiles import save_scatter
from ganforge.trainer import Trainer
from ganforge_plugins.toy2d import mode_stats

BASELINE = Path(__file__).resolve().parents[1].parent / "shared" / "baselines"


def evaluate(trainer: Trainer, dataset: str, n: int = 10_000) -> tuple[dict, torch.Tensor]:
    rng = torch.Generator().manual_seed(1234)
    z = torch.randn(n, *trainer.generator.latent_shape, generator=rng)
    points = trainer.outputs.generate(z, None)
    return mode_stats(points.numpy(), dataset), points


def run_recipe(path: Path, budget: float, marks: list[float], image_dir: Path | None) -> list:
    out = tempfile.mkdtemp(prefix="toy2d-")
    plugins = Plugins()
    recipe = load_recipe(path, [f"run.out_dir={out}", "train.steps=100000000"], plugins.registry)
    dataset = recipe.get("data.dataset")
    trainer = Trainer(recipe, plugins)
    rows, step, elapsed, pending = [], 0, 0.0, list(marks)
    while pending:
        start = time.perf_counter()
        while elapsed + time.perf_counter() - start < pending[0]:
            trainer.train_step(step)
            step += 1
        elapsed += time.perf_counter() - start
        stats, points = evaluate(trainer, dataset)  # not counted in the elapsed time
        modes = f"{stats['modes']}/{stats['num_modes']}"
        rows.append((path.stem, round(elapsed), step, modes, stats["high_quality"]))
        print(*rows[-1], flush=True)
        pending.pop(0)
    if image_dir is not None:
        reference = torch.from_numpy(np.asarray(trainer.parts.data.images[:8000]))
        save_scatter(image_dir / f"{path.stem}.png", points[:4000], reference)
    return rows


def run_baseline(budget: float) -> list:
    """The plain loop prints `iteration elapsed s (modes, high_quality)` every 250 iterations."""
    process = subprocess.Popen(
        [sys.executable, str(BASELINE / "toy_wgan_gp_plain.py"), "10000000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    rows = []
    try:
        for line in process.stdout:
            match = re.match(r"(\d+) ([\d.]+) s \((\d+), ([\d.]+)\)", line)
            if match:
                it, sec, modes, hq = match.groups()
                rows.append(("plain WGAN-GP loop", float(sec), int(it), f"{modes}/25", float(hq)))
                print(*rows[-1], flush=True)
                if float(sec) >= budget:
                    break
    finally:
        process.kill()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--budget", type=float, default=300, help="CPU seconds per method")
    parser.add_argument("--every", type=float, default=60, help="seconds between evaluations")
    parser.add_argument("--baseline", action="store_true", help="also run the plain loop")
    parser.add_argument("--images", type=Path, help="write the final scatter plots here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    marks = list(np.arange(args.every, args.budget + 1e-9, args.every))
    rows = []
    for path in args.recipes:
        rows += run_recipe(path, args.budget, marks, args.images)
    if args.baseline:
        rows += run_baseline(args.budget)
    print("\n| method | elapsed s | steps | modes | high quality |")
    print("|---|---|---|---|---|")
    for name, sec, steps, modes, hq in rows:
        print(f"| {name} | {sec:.0f} | {steps} | {modes} | {hq:.1%} |")


if __name__ == "__main__":
    main()
