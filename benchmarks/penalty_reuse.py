"""D updates with R1 and R2 every step: the penalties on the adversarial passes vs their own.

R3GAN's D update (``rsgan`` + ``r1`` + ``r2``, both penalties every step) on 32×32 grey
images, through ganforge's own step (``Trainer.critic_update``: batch, fakes from G without a
graph, critic passes, loss, penalties, backward, fused Adam). Each repetition times
``--window`` D updates with the penalties differentiating the adversarial passes (two critic
forwards an update) and ``--window`` with each penalty making its own critic pass (four), in
alternating order, on the same trainer; ``ratio`` is the median of the repetitions' ratios of
images/s. Float32 and bf16 autocast (each in its own process: Accelerate fixes the precision
per process). Target: ratio ≥ 1.5 in float32. A table is printed last.

    python benchmarks/penalty_reuse.py                   # about 3 minutes on 2 cores
    python benchmarks/penalty_reuse.py --models dcgan --reps 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from formats import cpu_name  # noqa: E402

MODELS = {
    # The R3GAN models of recipes/r3gan_fashion_mnist.toml.
    "r3gan": {"name": "r3gan", "widths": [64, 64, 32, 16], "cardinality": 4, "blocks": 1},
    # recipes/fashion_mnist.toml's critic (no normalisation), with its generator.
    "dcgan": {"name": "dcgan", "width": 32, "norm": "none"},
}


def trainer_for(model: str, precision: str, out: str):
    from ganforge.plugins import Plugins
    from ganforge.recipe import validate
    from ganforge.trainer import Trainer

    spec = dict(MODELS[model])
    generator = {k: v for k, v in spec.items() if k != "norm"}
    tables = {
        "run": {"name": "reuse", "out_dir": out, "mixed_precision": precision},
        "data": {"name": "synthetic", "resolution": 32, "channels": 1, "size": 2048},
        "generator": generator,
        "discriminator": spec,
        "loss": {"name": "rsgan"},
        "regularizers": {"r1": {"gamma": 0.05}, "r2": {"gamma": 0.05}},
        "optim": {
            "generator": {"betas": [0.0, 0.99]},
            "discriminator": {"betas": [0.0, 0.99]},
        },
        "train": {"steps": 1, "batch_size": 64, "resume": "never", "checkpoint_every": 0},
    }
    plugins = Plugins()
    return Trainer(validate(tables, plugins.registry), plugins)


def measure(model: str, precision: str, window: int, reps: int) -> dict:

    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_for(model, precision, out)
        images = window * trainer.batch_size

        def timed(reuse: bool) -> float:
            trainer._reuse_passes = reuse
            started = time.perf_counter()
            for _ in range(window):
                trainer.critic_update(0, keep_graph=False, measure=False)
            return images / (time.perf_counter() - started)

        timed(True), timed(False)  # warm-up
        shared, own, ratios = [], [], []
        for rep in range(reps):
            order = (True, False) if rep % 2 == 0 else (False, True)
            speeds = {reuse: timed(reuse) for reuse in order}
            shared.append(speeds[True])
            own.append(speeds[False])
            ratios.append(speeds[True] / speeds[False])
        return {
            "model": model,
            "precision": trainer.acc.mixed_precision,
            "d_params": sum(p.numel() for p in trainer.discriminator.parameters()),
            "reused_img_s": statistics.median(shared),
            "own_img_s": statistics.median(own),
            "ratio": statistics.median(ratios),
            "ratios": [round(r, 3) for r in ratios],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"])
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.window, args.reps)))
        return
    rows = []
    for model in args.models:
        for precision in args.precisions:
            command = [sys.executable, __file__, "--one", model, precision]
            command += ["--window", str(args.window), "--reps", str(args.reps)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    import torch

    print(f"\nCPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.window} D updates of 64 images per timing, {args.reps} repetitions, median")
    print(
        "| D | precision | D params | penalties on the adversarial passes, img/s "
        "| own passes, img/s | ratio |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['precision']} | {r['d_params']:,} | {r['reused_img_s']:,.0f} "
            f"| {r['own_img_s']:,.0f} | {r['ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
