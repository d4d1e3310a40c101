"""Does augmentation help on little data? The quickstart on 10% of the digits (179 images),
with and without DiffAugment, at the same wall-clock time.

1. Trains the quickstart with ``data.fraction=0.1`` for ``--steps`` steps (timed, W).
2. Measures both configurations' training speed in short probes, and trains the augmented
   run (``augment.name = "diffaugment"``, policy ``--policy``, ``--augment`` overrides) for
   as many steps as fit in the same training time.
3. Scores 1,000 samples of each against **all** the digits (digits-FD and digits-IS; the
   held-out real digits are the ceiling): the runs saw 179 of them, the judge knows 1,797.

    python benchmarks/small_data.py                     # about 8 minutes on 2 CPU cores
    python benchmarks/small_data.py --steps 100         # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import ROOT, digits_evaluation, export_features, run_ganforge  # noqa: E402

from ganforge.evaluation import table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="overrides for both runs")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_small_data")
    parser.add_argument("--steps", type=int, default=3000, help="steps of the plain run")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--policy", default="color,translation,cutout")
    parser.add_argument("--probe", type=int, default=200, help="steps timed in each probe")
    parser.add_argument(
        "--augment", action="append", default=[], help="an override for the augmented run only"
    )
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    policy = "[" + ", ".join(f'"{p.strip()}"' for p in args.policy.split(",")) + "]"
    common = [f"data.fraction={args.fraction}", "train.checkpoint_every=0", *args.overrides]
    augmented = ["augment.name=diffaugment", f"augment.policy={policy}", *args.augment]

    # Training speed of each configuration from short probes: the median images/s of their
    # log windows, so start-up and the export do not count.
    speed = {}
    for name, extra in (("plain", []), ("augmented", augmented)):
        probe = out / f"probe_{name}"
        run_ganforge(probe, [*common, *extra, f"train.steps={args.probe}", "train.log_every=25"])
        lines = (probe / "metrics.jsonl").read_text().splitlines()
        windows = [json.loads(line)["images_per_s"] for line in lines]
        speed[name] = statistics.median(windows[1:])  # the first window holds warm-up
    ratio = speed["augmented"] / speed["plain"]
    print(f"images/s: {speed}", flush=True)
    steps = {"plain": args.steps, "augmented": max(1, round(args.steps * ratio))}
    runs = {
        "plain": run_ganforge(out / "plain", [*common, f"train.steps={steps['plain']}"]),
        "augmented": run_ganforge(
            out / "augmented", [*common, *augmented, f"train.steps={steps['augmented']}"]
        ),
    }
    print(f"runs: {runs}", flush=True)

    evaluation = digits_evaluation(1000)
    with torch.no_grad():
        features = {"real (held out)": evaluation.held_out}
        for name in runs:
            export = out / name / "generator.safetensors"
            features[name] = export_features(evaluation, export, 1000)
    scores = {name: evaluation.score(f) for name, f in features.items()}
    print(table(scores))
    print("\n| run | steps | wall s | digits-FD | digits-IS |")
    print("|---|---:|---:|---:|---:|")
    for name, run in runs.items():
        m = scores[name]
        print(f"| {name} | {run['steps']} | {run['wall']:.0f} | {m['fd']:.2f} | {m['is']:.2f} |")
    m = scores["real (held out)"]
    print(f"| real (held out) | | | {m['fd']:.2f} | {m['is']:.2f} |")
    (out / "results.json").write_text(json.dumps({"runs": runs, "metrics": scores}))


if __name__ == "__main__":
    main()
