"""R3GAN vs ganforge's DCGAN recipe on Fashion-MNIST, per seed, in about the same wall-clock.

For each seed: trains ``recipes/fashion_mnist.toml`` (DCGAN, hinge, lazy R1, bf16) and
``recipes/r3gan_fashion_mnist.toml`` (R3GAN: rsgan + R1 + R2 every step, schedules, float32),
each a whole process timed (start-up, data, grids, checkpoints and export included); the R3GAN
recipe's steps are sized to take about as long as the DCGAN recipe on the 2-core EPYC, and
both times are printed. Then scores both exports with ``ganforge eval`` on 10,000 samples
against the 10,000 test images with the ``fashion_mnist`` extractor: FD, KID, IS,
precision/recall. Medians over the seeds, and every seed's row, are printed last.

    python benchmarks/r3gan_fashion.py                      # 3 seeds, about 2 hours on 2 cores
    python benchmarks/r3gan_fashion.py --seeds 0 --num 2000 train.steps=100   # smoke run

Recipe overrides apply to both recipes. Needs Fashion-MNIST's IDX files
(``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from formats import cpu_name  # noqa: E402
from quality import run_ganforge  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"dcgan": "recipes/fashion_mnist.toml", "r3gan": "recipes/r3gan_fashion_mnist.toml"}
COLUMNS = ("fd", "kid", "is", "pr/precision", "pr/recall")


def evaluate(export: Path, num: int, out: Path) -> dict:
    command = [sys.executable, "-m", "ganforge", "eval", str(export), "--data", "fashion_mnist"]
    command += ["--num", str(num), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"ganforge eval failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(out.read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides (both recipes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num", type=int, default=10_000, help="samples scored")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "r3gan_fashion")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for name, recipe in RECIPES.items():
            out = args.out / f"{name}_s{seed}"
            overrides = [f"run.seed={seed}", *args.overrides]
            trained = run_ganforge(out, overrides, recipe)
            metrics = evaluate(out / "generator.safetensors", args.num, out / "eval.json")
            rows.append({"method": name, "seed": seed, **trained, **metrics["generated"]})
            ceiling = {k: v for k, v in metrics.items() if k != "generated"}
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")

    print(f"\nCPU: {cpu_name()}; {args.num:,} samples vs the test split, fashion_mnist extractor")
    for what, values in ceiling.items():  # the same for every row
        print(f"{what} (the ceiling): " + ", ".join(f"{c} {values[c]:.4g}" for c in COLUMNS))
    header = "| method | seed | steps | wall s | " + " | ".join(COLUMNS) + " |"
    print(header)
    print("|" + "---|" * (4 + len(COLUMNS)))
    for row in rows:
        cells = [f"{row[c]:.4g}" for c in COLUMNS]
        print(
            f"| {row['method']} | {row['seed']} | {row['steps']} | {row['wall']:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    for name in RECIPES:
        mine = [r for r in rows if r["method"] == name]
        cells = [f"{statistics.median(r[c] for r in mine):.4g}" for c in COLUMNS]
        wall = statistics.median(r["wall"] for r in mine)
        print(f"| {name} | median | | {wall:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
