"""4× super-resolution on Fashion-MNIST: L1 + a conditioned patch critic vs L1 alone, at equal
wall-clock time.

Trains ``superres:fashion`` (the U-Net generator, L1 and the adversarial term of a patch
critic that sees the 7×7 input) and ``superres:fashion_l1`` (the same recipe with
``loss.weight = 0``: no critic at all; its steps are sized to take as long on the 2-core CPU,
as its step is cheaper), each a whole process timed. Then scores both exports with
``ganforge eval`` on the 10,000 test images: the outputs for their box-downscaled copies
against them, FD (the ``fashion_mnist`` classifier's features), the classifier's accuracy on
the outputs (their targets' classes), PSNR and SSIM. Seeds' rows and medians printed last.

    python benchmarks/superres_fashion.py                    # seed 0, about 20 min on 2 cores
    python benchmarks/superres_fashion.py --seeds 0 1 2
    python benchmarks/superres_fashion.py --num 1000 train.steps=100   # smoke run

Needs Fashion-MNIST's IDX files (``apt-get install dataset-fashion-mnist``).
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
RECIPES = {"l1 + critic": "superres:fashion", "l1 alone": "superres:fashion_l1"}
COLUMNS = ("fd", "accuracy", "psnr", "ssim")


def evaluate(export: Path, num: int, out: Path) -> dict:
    command = [sys.executable, "-m", "ganforge", "eval", str(export), "--data", "fashion_mnist"]
    command += ["--num", str(num), "--out", str(out), "--metric", "fd", "--metric", "accuracy"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"ganforge eval failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(out.read_text())["metrics"]["generated"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides (both recipes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num", type=int, default=10_000, help="test images scored")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "superres_fashion")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for method, recipe in RECIPES.items():
            out = args.out / f"{recipe.split(':')[1]}_s{seed}"
            trained = run_ganforge(out, [f"run.seed={seed}", *args.overrides], recipe)
            metrics = evaluate(out / "generator.safetensors", args.num, out / "eval.json")
            rows.append({"method": method, "seed": seed, **trained, **metrics})
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")

    print(f"\nCPU: {cpu_name()}; {args.num:,} test images, fashion_mnist classifier")
    print("| method | seed | steps | wall s | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (4 + len(COLUMNS)))
    for row in rows:
        cells = " | ".join(f"{row[c]:.4g}" for c in COLUMNS)
        print(f"| {row['method']} | {row['seed']} | {row['steps']} | {row['wall']:.0f} | {cells} |")
    medians = {}
    for method in RECIPES:
        mine = [r for r in rows if r["method"] == method]
        medians[method] = {c: statistics.median(r[c] for r in mine) for c in COLUMNS}
        cells = " | ".join(f"{medians[method][c]:.4g}" for c in COLUMNS)
        print(f"| {method} (median) | | | | {cells} |")
    gan, l1 = medians["l1 + critic"], medians["l1 alone"]
    print(
        f"\nFD ratio (critic / L1 alone): {gan['fd'] / l1['fd']:.3f} (target <= 0.7); "
        f"accuracy {gan['accuracy']:.3f} (target >= 0.85); "
        f"PSNR {gan['psnr'] - l1['psnr']:+.2f} dB (target within 1.5 dB)"
    )


if __name__ == "__main__":
    main()
