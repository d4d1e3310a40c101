"""Generators that take an input, on Fashion-MNIST: with their critic vs without it, at about
equal wall-clock time.

``--task superres``: 4× super-resolution, ``superres:fashion`` (a U-Net generator, L1 and the
adversarial term of a patch critic that sees the 7×7 input) against ``superres:fashion_l1``
(the same recipe with ``loss.adversarial_weight = 0``: L1 alone, no critic at all).
``--task autoencoder``: ``autoencoder:fashion`` (L1, a perceptual term and a patch critic
with VQGAN's adaptive weight after a warm-up) against ``autoencoder:fashion_rec`` (the same
without the critic).

Each is trained as a whole process, timed (the baselines' steps are sized to take about as
long on the 2-core CPU: their step is cheaper); then both exports are scored with
``ganforge eval`` on the 10,000 test images: the outputs for the inputs made from them
(box-downscaled copies; the images themselves) against them, FD (the ``fashion_mnist``
classifier's features), the classifier's accuracy on the outputs (their targets' classes),
PSNR and SSIM. Every seed's row and the medians are printed last, with the task's targets.

    python benchmarks/image_to_image.py --task superres              # seed 0, ~25 min on 2 cores
    python benchmarks/image_to_image.py --task autoencoder --seeds 0 1 2
    python benchmarks/image_to_image.py --task superres --num 1000 train.steps=100   # smoke run

Needs Fashion-MNIST's IDX files (``apt-get install dataset-fashion-mnist``) and the plugins
(``pip install -e plugins/ganforge-superres -e plugins/ganforge-autoencoder``).
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
TASKS = {
    "superres": {"with critic": "superres:fashion", "without": "superres:fashion_l1"},
    "autoencoder": {"with critic": "autoencoder:fashion", "without": "autoencoder:fashion_rec"},
}
COLUMNS = ("fd", "accuracy", "psnr", "ssim")


def evaluate(export: Path, num: int, out: Path) -> dict:
    command = [sys.executable, "-m", "ganforge", "eval", str(export), "--data", "fashion_mnist"]
    command += ["--num", str(num), "--out", str(out), "--metric", "fd", "--metric", "accuracy"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"ganforge eval failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(out.read_text())["metrics"]["generated"]


def speed(out: Path, recipe: str, overrides: list[str]) -> float:
    """Images/s of ``recipe`` over its steps 101-200 (its critic on from the start)."""
    probe = [*overrides, "train.steps=200", "train.log_every=100", "loss.critic_start=0"]
    run_ganforge(out, probe, recipe)
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return last["images_per_s"]


def equal_time(recipes: dict, out: Path, overrides: list[str]) -> list[str]:
    """The baseline's ``train.steps`` for about the wall-clock time of the run with the critic,
    from both recipes' measured speeds (the critic's warm-up steps counted at the baseline's
    speed)."""
    from ganforge.plugins import Plugins
    from ganforge.recipe import load_recipe

    with_critic = load_recipe(recipes["with critic"], overrides, Plugins().registry)
    steps, start = with_critic.get("train.steps"), with_critic.get("loss.critic_start")
    fast = speed(out / "probe_without", recipes["without"], overrides)
    slow = speed(out / "probe_with", recipes["with critic"], overrides)
    equal = start + round((steps - start) * fast / slow)
    print(f"equal time: {slow:.1f} and {fast:.1f} images/s -> the baseline trains {equal} steps")
    return [f"train.steps={equal}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides (both recipes)")
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num", type=int, default=10_000, help="test images scored")
    parser.add_argument("--out", type=Path, help="default: runs/image_to_image_TASK")
    parser.add_argument(
        "--equal-time",
        action="store_true",
        help="size the baseline's steps to the run with the critic: both are timed for 200 "
        "steps first (past the critic's start), and the baseline gets the steps its speed "
        "allows in the time the other takes",
    )
    args = parser.parse_args()
    recipes = TASKS[args.task]
    args.out = args.out or ROOT / "runs" / f"image_to_image_{args.task}"
    args.out.mkdir(parents=True, exist_ok=True)
    baseline_steps = equal_time(recipes, args.out, args.overrides) if args.equal_time else []
    rows = []
    for seed in args.seeds:
        for method, recipe in recipes.items():
            out = args.out / f"{recipe.replace(':', '_')}_s{seed}"
            overrides = [f"run.seed={seed}", *args.overrides]
            overrides += baseline_steps if method == "without" else []
            trained = run_ganforge(out, overrides, recipe)
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
    for method in recipes:
        mine = [r for r in rows if r["method"] == method]
        medians[method] = {c: statistics.median(r[c] for r in mine) for c in COLUMNS}
        cells = " | ".join(f"{medians[method][c]:.4g}" for c in COLUMNS)
        print(f"| {method} (median) | | | | {cells} |")
    gan, base = medians["with critic"], medians["without"]
    ratio = gan["fd"] / base["fd"]
    if args.task == "superres":
        print(
            f"\nFD ratio (with / without the critic): {ratio:.3f} (target <= 0.7); accuracy "
            f"{gan['accuracy']:.3f} (target >= 0.85); PSNR {gan['psnr'] - base['psnr']:+.2f} dB "
            "(target within 1.5 dB)"
        )
    else:
        print(f"\nFD ratio (with / without the critic): {ratio:.3f} (target <= 0.7)")


if __name__ == "__main__":
    main()
