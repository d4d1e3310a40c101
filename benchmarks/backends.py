"""The quickstart-sized models under each backend on two processes: steps/s, and each rank's
bytes of parameters and optimizer state (showing that sharding shards).

Every backend trains the quickstart recipe (DCGAN-32, width 32, 20 clusters, batch 64, EMA)
on the same launch: ``torchrun --standalone --nproc_per_node N`` with the recipe switch
``distributed.backend`` (one launcher for all, so only the backend differs). Each run takes
``--warmup`` steps, then times ``--steps`` steps of the training step (``Trainer.train_step``;
no logging, samples or checkpoints inside the window). Per rank, ``parameters`` counts what
the models' parameters occupy on that rank (ZeRO-3 and FSDP2: its shards), ``master`` ZeRO's
float32 copy of its partition, ``optimizer`` Adam's moments and step. The table is printed
last.

    python benchmarks/backends.py                       # about 3 minutes on 2 CPU cores
    python benchmarks/backends.py --steps 100 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = {
    "ddp": ["distributed.backend=ddp"],
    "zero1": ["distributed.backend=deepspeed", "distributed.zero_stage=1"],
    "zero2": ["distributed.backend=deepspeed", "distributed.zero_stage=2"],
    "zero3": ["distributed.backend=deepspeed", "distributed.zero_stage=3"],
    "fsdp": ["distributed.backend=fsdp"],
}


def worker(name: str, warmup: int, steps: int, out: str) -> None:
    """One backend's measurement, inside the launch (every rank)."""
    import torch

    from ganforge.plugins import Plugins
    from ganforge.recipe import load_recipe
    from ganforge.trainer import Trainer

    plugins = Plugins()
    overrides = [*BACKENDS[name], f"run.out_dir={out}", f"train.steps={warmup + steps}"]
    recipe = load_recipe(ROOT / "recipes" / "quickstart.toml", overrides, plugins.registry)
    trainer = Trainer(recipe, plugins)
    for step in range(warmup):
        trainer.train_step(step, measure=False)
    torch.distributed.barrier()
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        trainer.train_step(step, measure=False)
    trainer.progress.skipped.item()  # the last update done
    torch.distributed.barrier()
    elapsed = time.perf_counter() - start
    mine = {role: trainer.execution.local_bytes(role) for role in ("generator", "discriminator")}
    everyone = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, mine)
    if trainer.acc.is_main_process:
        row = {
            "backend": trainer.backend_name,
            "steps_per_s": steps / elapsed,
            "images_per_s": steps * trainer.batch_size / elapsed,
            "ranks": everyone,
        }
        print("RESULT " + json.dumps(row), flush=True)
    trainer.acc.end_training()


def mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, out = args.worker.split(":", 1)
        worker(name, args.warmup, args.steps, out)
        return
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    rows = []
    for name in args.backends.split(","):
        with tempfile.TemporaryDirectory() as out:
            command = [torchrun, "--standalone", "--nproc_per_node", str(args.processes)]
            command += [__file__, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            command += ["--worker", f"{name}:{out}"]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not results:
            print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(results[0][len("RESULT ") :]))
        print(f"{name}: done", file=sys.stderr)
    print(
        f"\n{args.processes} processes, {args.steps} timed steps; MiB per rank "
        "(G + D): parameters / ZeRO master / optimizer state"
    )
    print(
        "| backend | steps/s | images/s | "
        + " | ".join(f"rank {r} params / master / optimizer" for r in range(args.processes))
        + " |"
    )
    print("|---|---:|---:|" + "---|" * args.processes)
    for row in rows:
        cells = []
        for rank in row["ranks"]:
            total = {
                k: sum(role.get(k, 0) for role in rank.values())
                for k in ("parameters", "master", "optimizer")
            }
            cells.append(" / ".join(mib(total[k]) for k in ("parameters", "master", "optimizer")))
        print(
            f"| {row['backend']} | {row['steps_per_s']:.2f} | {row['images_per_s']:.0f} | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main()
