"""Fashion-MNIST quality: ganforge's CPU recipe vs the plain DCGAN loop at equal wall-clock time.

1. Trains ``recipes/fashion_mnist.toml`` with ganforge in a subprocess and times the whole
   process (W: start-up, data, sample grids, checkpoints and export included).
2. Trains ``/work/shared/baselines/fashion_dcgan_plain.py`` (the usual DCGAN settings: BCE,
   batch 64, Adam 2e-4/0.5) for ``T = W`` seconds of its own loop (its imports and PNG writing
   come on top: the generous choice for the baseline).
3. Scores ``--num`` samples of each, and as many real test images (the ceiling), with the
   ``fashion_mnist`` extractor (a CNN classifier trained on the train split, ≥ 90% test
   accuracy) against ``--reference`` other test images: FD, KID, IS, precision/recall and the
   class balance (the classifier's predicted classes: the effective number of classes,
   exp(entropy), 10 when balanced; and the rarest class's share). Saves 64 samples of each
   side as pictures.

    python benchmarks/fashion_quality.py                   # full run, about 20 minutes
    python benchmarks/fashion_quality.py --steps 100       # smoke run
    python benchmarks/fashion_quality.py train.steps=8000  # recipe overrides

Needs Fashion-MNIST's IDX files (``apt-get install dataset-fashion-mnist``, or FASHION_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import export_features, png_batches, run_ganforge, timed  # noqa: E402

from ganforge.data import open_store  # noqa: E402
from ganforge.evaluation import Features, prepare, table  # noqa: E402
from ganforge.export import latents_from, load_generator  # noqa: E402
from ganforge.plugins import Plugins  # noqa: E402
from ganforge.runfiles import save_grid  # noqa: E402
from ganforge_plugins.idx import FASHION_DIR, fashion_mnist_source  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE = Path("/work/shared/baselines/fashion_dcgan_plain.py")


def run_plain(out: Path, budget: float) -> dict:
    env = {**os.environ, "T": f"{budget:.1f}", "W": "32", "B": "64"}
    wall, stdout = timed([sys.executable, str(BASELINE), str(out)], out.with_suffix(".log"), env)
    steps = int(stdout.split("steps ", 1)[1].split()[0])
    return {"steps": steps, "wall": wall, "budget": budget}


def balance(features: Features) -> dict[str, float]:
    """The classifier's predicted classes: effective number exp(H) and the rarest one's share."""
    counts = torch.bincount(features.logits.argmax(1), minlength=10).double()
    share = counts / counts.sum()
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    return {"classes": entropy.exp().item(), "rarest": share.min().item()}


def head(features: Features, num: int) -> Features:
    return Features(**{k: v[:num] for k, v in features.tensors().items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides")
    parser.add_argument("--recipe", default="recipes/fashion_mnist.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fashion_quality")
    parser.add_argument("--steps", type=int, help="train.steps (smoke runs)")
    parser.add_argument("--num", type=int, default=1000, help="samples scored per side")
    parser.add_argument("--reference", type=int, default=5000, help="test images compared with")
    parser.add_argument("--pictures", type=Path, help="folder for the two sample pictures")
    args = parser.parse_args()
    folder = os.environ.get("FASHION_DIR", FASHION_DIR)
    os.environ["FASHION_DIR"] = folder  # the baseline's variable
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.path={folder}", *args.overrides]
    overrides += [f"train.steps={args.steps}"] if args.steps else []

    gf = run_ganforge(out / "ganforge", overrides, args.recipe)
    print(f"ganforge: {gf}", flush=True)
    plain_dir = out / "plain"
    shutil.rmtree(plain_dir, ignore_errors=True)
    plain = run_plain(plain_dir, gf["wall"])
    print(f"plain: {plain}", flush=True)

    test = fashion_mnist_source(resolution=32, path=folder, split="test")
    evaluation = prepare(
        Plugins().registry,
        open_store(test, 32),
        test.fingerprint,
        test.metadata,
        num=args.reference,  # reference test images; as many others are held out
        metrics={"fd": {}, "kid": {}, "is": {}, "pr": {}},
    )
    export = out / "ganforge" / "generator.safetensors"
    with torch.no_grad():
        sets = {
            "real test images (held out)": head(evaluation.held_out, args.num),
            "ganforge fashion_mnist": export_features(evaluation, export, args.num),
            "plain DCGAN loop": evaluation.features_of(
                png_batches(plain_dir, args.num), keep_samples=False
            ),
        }
    results = {}
    for name, features in sets.items():
        results[name] = {**evaluation.score(features), **balance(features)}
    print(table(results, evaluation.legend()))

    real, ours, base = (results[n] for n in sets)
    print(f"\nFD ratio ganforge / plain: {ours['fd'] / base['fd']:.3f} (target <= 0.5)")
    print(f"IS ganforge / real: {ours['is'] / real['is']:.3f} (target >= 0.9)")
    print(f"recall ganforge - plain: {ours['pr/recall'] - base['pr/recall']:+.3f} (target >= 0)")
    print("\n| run | steps | wall s | FD | KID | IS | precision | recall | classes | rarest |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, run in zip(sets, ({}, gf, plain), strict=True):
        m = results[name]
        steps, wall = run.get("steps", ""), f"{run['wall']:.0f}" if run else ""
        print(
            f"| {name} | {steps} | {wall} | {m['fd']:.2f} | {m['kid']:.3g} | {m['is']:.2f} | "
            f"{m['pr/precision']:.3f} | {m['pr/recall']:.3f} | {m['classes']:.2f} | "
            f"{m['rarest']:.3f} |"
        )
    (out / "results.json").write_text(json.dumps({"runs": [gf, plain], "metrics": results}))
    if args.pictures:
        generator, info = load_generator(export)
        z = latents_from(info, 64, torch.Generator().manual_seed(0))
        y = None
        if info.num_classes:
            prior = torch.tensor(info.label_prior or [1.0] * info.num_classes)
            y = torch.multinomial(prior, 64, replacement=True, generator=torch.Generator())
        with torch.no_grad():
            save_grid(args.pictures / "fashion_ganforge.png", generator(z, y)[:, :, 2:30, 2:30])
        plain_images = next(png_batches(plain_dir, 64))[0]
        save_grid(args.pictures / "fashion_plain.png", plain_images)


if __name__ == "__main__":
    main()
