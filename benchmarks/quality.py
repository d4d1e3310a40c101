"""Quickstart quality vs the plain PyTorch loop, at equal wall-clock time, in ganforge's metrics.

1. Trains ``recipes/quickstart.toml`` with ganforge in a subprocess and times the whole process
   (W: start-up, data, sample grids, checkpoints and export included).
2. Trains ``/work/shared/baselines/digits_dcgan_plain.py`` for ``T = W`` seconds (its imports
   and PNG writing come on top: the generous choice for the baseline).
3. Scores ``--num`` samples of each, and the held-out real digits (the ceiling), with the
   ``digits`` feature extractor (a CNN classifier, ≥ 97% held-out accuracy): digits-FD (lower
   is better) and digits-IS (higher is better; the real data's is the ceiling).

    python benchmarks/quality.py                       # full run, about 10 minutes
    python benchmarks/quality.py --steps 100           # smoke run
    python benchmarks/quality.py train.steps=4000 ema.decay=0.999   # recipe overrides
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganforge.evaluation import generated_batches, prepare, table
from ganforge.export import latents_from, load_generator
from ganforge.plugins import Plugins

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path("/work/shared/baselines/digits_dcgan_plain.py")


def timed(args: list[str], log: Path, env=None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    log.write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"{args[:3]} failed, see {log}")
    return time.perf_counter() - start, done.stdout


def run_ganforge(out: Path, overrides: list[str], recipe: str = "recipes/quickstart.toml") -> dict:
    """Train ``recipe`` anew into ``out``, timing the whole process; its steps and wall time."""
    args = [sys.executable, "-m", "ganforge", recipe, f"run.out_dir={out}"]
    wall, _ = timed([*args, "--no-resume", *overrides], out.with_suffix(".log"))
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return {"steps": last["step"], "wall": wall}


def run_plain(out: Path, budget: float) -> dict:
    env = {**os.environ, "T": f"{budget:.1f}", "W": "32", "B": "64"}  # its W is the width
    wall, stdout = timed([sys.executable, str(BASELINE), str(out)], out.with_suffix(".log"), env)
    steps = int(re.search(r"steps (\d+)", stdout).group(1))
    return {"steps": steps, "wall": wall, "budget": budget}


def png_batches(folder: Path, num: int):
    """The baseline's first ``num`` PNG samples, as images in [-1, 1]."""
    files = sorted(folder.glob("*.png"))[:num]
    arr = np.stack([np.asarray(Image.open(p).convert("L")) for p in files])
    x = torch.from_numpy(arr).float().div(127.5).sub(1).unsqueeze(1)
    yield from ((part, None) for part in x.split(250))


def digits_evaluation(num: int, metrics: dict | None = None):
    """digits-FD and digits-IS against all 1,797 digits (``num`` reference, the rest held out)."""
    from ganforge_plugins.digits import digits_source

    source = digits_source(resolution=32)
    return prepare(
        Plugins().registry,
        source.load(),
        source.fingerprint,
        source.metadata,
        num=num,
        metrics=metrics or {"fd": {}, "is": {}},
    )


def export_features(evaluation, export: Path, num: int):
    """Features of ``num`` samples of an exported generator (seed 0; classes drawn uniformly,
    clusters with their share of the data)."""
    generator, info = load_generator(export)
    batches = generated_batches(
        lambda z, y: generator(z, y),
        lambda n, rng: latents_from(info, n, rng),
        num,
        info.num_classes,
        0,
        prior=info.label_prior,
    )
    return evaluation.features_of(batches, keep_samples=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="quickstart recipe overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quality")
    parser.add_argument("--steps", type=int, help="train.steps (smoke runs)")
    parser.add_argument("--num", type=int, default=1000, help="samples scored per run")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = args.overrides + ([f"train.steps={args.steps}"] if args.steps else [])

    gf = run_ganforge(out / "ganforge", overrides)
    print(f"ganforge: {gf}", flush=True)
    plain = run_plain(out / "plain", gf["wall"])
    print(f"plain: {plain}", flush=True)

    evaluation = digits_evaluation(args.num)
    with torch.no_grad():
        sets = {
            "real (held out)": evaluation.held_out,
            "ganforge quickstart": export_features(
                evaluation, out / "ganforge" / "generator.safetensors", args.num
            ),
            "plain loop": evaluation.features_of(
                png_batches(out / "plain", args.num), keep_samples=False
            ),
        }
    results = {name: evaluation.score(features) for name, features in sets.items()}
    print(table(results))
    ceiling = results["real (held out)"]["is"]
    print("\n| run | steps | wall s | digits-FD | digits-IS | IS / real IS |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, run in (("ganforge quickstart", gf), ("plain loop", plain), ("real (held out)", {})):
        m = results[name]
        steps, wall = run.get("steps", ""), f"{run['wall']:.0f}" if run else ""
        print(
            f"| {name} | {steps} | {wall} | {m['fd']:.2f} | {m['is']:.2f} | "
            f"{m['is'] / ceiling:.3f} |"
        )
    (out / "results.json").write_text(json.dumps({"runs": [gf, plain], "metrics": results}))


if __name__ == "__main__":
    main()
