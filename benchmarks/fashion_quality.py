"""Fashion-MNIST quality: ganforge's CPU recipe vs the plain DCGAN loop at equal wall-clock time.

1. Trains ``recipes/fashion_mnist.toml`` with ganforge in a subprocess and times the whole
   process (W: start-up, data, sample grids, checkpoints and export included).
2. Trains ``/work/shared/baselines/fashion_dcgan_plain.py`` (the usual DCGAN settings: BCE,
   batch 64, Adam 2e-4/0.5) for ``T = W`` seconds of its own loop (its imports and PNG writing
   come on top: the generous choice for the baseline). The script runs unmodified through
   ``baseline_samples.py``, which then draws more samples from the generator it trained,
   the way the script draws its own 1,000.
3. Scores the first N samples of each side, for each N in ``--num`` (5,000 and 10,000), and N
   real images (the ceiling), with the ``fashion_mnist`` extractor (a CNN classifier trained
   on the train split, ≥ 90% test accuracy) against ``--reference`` test images: FD, KID, IS,
   precision/recall and the class balance (the classifier's predicted classes: the effective
   number of classes, exp(entropy), 10 when balanced; and the rarest class's share). Saves 64
   samples of each side as pictures.

The reference is the whole test split by default (10,000 images, the usual FID-10k protocol).
The real row is then N random *train* images (the classifier trained on them, so that ceiling
is a little optimistic), and the IS target compares with the IS of the
10,000 test images themselves. ``--reference 5000 --num 1000 5000`` is the protocol of runs 1
to 5 (docs/benchmarks/fashion_mnist.md): half the test split as the reference, the other
half as the real row.

FD is biased upwards by an amount that shrinks as the sample sets grow: real images score
18.2 against other test images at 1,000 per side, 5.3 at 5,000, and 1.9 at 10,000 (train
images against the whole test split). That floor is added to both sides and pulls every
ratio towards 1; the largest sets are the ones to compare.

    python benchmarks/fashion_quality.py                   # full run, about 25 minutes
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


def run_plain(out: Path, budget: float, num: int) -> dict:
    """The baseline for ``budget`` seconds of its own loop, then ``num`` samples of its
    generator (its own 1,000 PNGs and more drawn the same way: ``baseline_samples.py``)."""
    env = {**os.environ, "T": f"{budget:.1f}", "W": "32", "B": "64"}
    runner = [sys.executable, str(Path(__file__).parent / "baseline_samples.py")]
    args = [*runner, str(BASELINE), str(out), str(num), "2"]  # 2: the padding it crops
    wall, stdout = timed(args, out.with_suffix(".log"), env)
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
    parser.add_argument(
        "--num", type=int, nargs="+", default=[5000, 10000], help="samples scored per side"
    )
    parser.add_argument(
        "--reference", type=int, default=10_000, help="test images compared with (at most 10,000)"
    )
    parser.add_argument("--pictures", type=Path, help="folder for the two sample pictures")
    args = parser.parse_args()
    most = max(args.num)
    if most > args.reference or args.reference > 10_000:
        parser.error("--num <= --reference <= 10,000 (the test split)")
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
    plain = run_plain(plain_dir, gf["wall"], most)
    print(f"plain: {plain}", flush=True)

    source = fashion_mnist_source(resolution=32, path=folder, split="test")
    train = fashion_mnist_source(resolution=32, path=folder, split="train")
    evaluation = prepare(
        Plugins().registry,
        open_store(source, 32),
        source.fingerprint,
        source.metadata,
        num=args.reference,  # test images; as many others, or train images, are the real row
        metrics={"fd": {}, "kid": {}, "is": {}, "pr": {}},
        train=train,  # the real row when all test images are the reference, as in `ganforge eval`
    )
    whole = evaluation.ceiling_source == "train split"
    real_name = "real train images" if whole else "real test images (held out)"
    real_features = head(evaluation.held_out, most)
    real_is = evaluation.metrics["is"](evaluation.real, evaluation.real, evaluation.context)[""]
    export = out / "ganforge" / "generator.safetensors"
    with torch.no_grad():
        sets = {
            real_name: real_features,
            "ganforge fashion_mnist": export_features(evaluation, export, most),
            "plain DCGAN loop": evaluation.features_of(
                png_batches(plain_dir, most), keep_samples=False
            ),
        }
    print(f"IS of the {len(evaluation.real.features)} reference test images: {real_is:.2f}")
    results: dict[int, dict] = {}
    for num in args.num:
        firsts = {name: head(f, num) for name, f in sets.items()}
        results[num] = {name: {**evaluation.score(f), **balance(f)} for name, f in firsts.items()}
        print(f"\n{num} samples per side:")
        print(table(results[num], evaluation.legend()))
        real, ours, base = (results[num][n] for n in sets)
        print(f"FD ratio ganforge / plain: {ours['fd'] / base['fd']:.3f} (target <= 0.5)")
        print(f"IS ganforge / test images: {ours['is'] / real_is:.3f} (target >= 0.9)")
        recall = ours["pr/recall"] - base["pr/recall"]
        print(f"recall ganforge - plain: {recall:+.3f} (target >= 0)")
    columns = "FD | KID | IS | precision | recall | classes | rarest"
    print(f"\n| run | samples | steps | wall s | {columns} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for num in args.num:
        for name, run in zip(sets, ({}, gf, plain), strict=True):
            m = results[num][name]
            steps, wall = run.get("steps", ""), f"{run['wall']:.0f}" if run else ""
            print(
                f"| {name} | {num} | {steps} | {wall} | {m['fd']:.2f} | {m['kid']:.3g} | "
                f"{m['is']:.2f} | {m['pr/precision']:.3f} | {m['pr/recall']:.3f} | "
                f"{m['classes']:.2f} | {m['rarest']:.3f} |"
            )
    metrics = {str(num): values for num, values in results.items()}
    summary = {"runs": [gf, plain], "metrics": metrics, "test_is": real_is}
    (out / "results.json").write_text(json.dumps(summary))
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
