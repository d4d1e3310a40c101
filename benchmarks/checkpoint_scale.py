"""Where full-tensor checkpoints stop scaling: the cost of a checkpoint and of a resume, against
the size of G and D.

ganforge's checkpoints hold whole tensors: G, D and the EMA of G (``models.safetensors``), both
Adam optimizers' moments (``optimizers.safetensors``, twice the parameters), the random
states. For each size, in a fresh process (its memory its own): a run whose G and D are MLPs of
about ``--sizes`` million parameters each (``hidden`` 4096, depth chosen to fit), trained one
step on one process, then

- ``save``: ``Trainer.save_checkpoint()`` (gather, write, fsync, rename), seconds;
- ``resume``: building the same run again with ``train.resume`` (which reads every file) less
  building it from scratch, seconds;
- the checkpoint's size on disk, and the peak private memory (``RssAnon``) of the process.

Under several processes every process also gathers whole tensors at each checkpoint (ZeRO,
FSDP2) and reads the whole files at resume, so per-process memory is the one-process figure.

    python benchmarks/checkpoint_scale.py --sizes 25 100 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, sys, threading, time
from pathlib import Path

def rss_anon_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

peak = [rss_anon_mib()]
def poll():
    while True:
        peak[0] = max(peak[0], rss_anon_mib())
        time.sleep(0.02)
threading.Thread(target=poll, daemon=True).start()

from ganforge.plugins import Plugins
from ganforge.recipe import validate
from ganforge.trainer import Trainer

millions, out = int(sys.argv[1]), Path(sys.argv[2])
hidden = 4096
depth = max(2, round(millions * 1e6 / hidden**2) + 1)
tables = {
    "run": {"name": "scale", "out_dir": str(out), "mixed_precision": "no"},
    "data": {"name": "toy2d", "dataset": "8gaussians", "size": 256},
    "generator": {"name": "mlp", "hidden": hidden, "depth": depth, "latent_dim": 2},
    "discriminator": {"name": "mlp", "hidden": hidden, "depth": depth},
    "loss": {"name": "hinge"},
    "ema": {"decay": 0.999},
    "train": {"steps": 1, "batch_size": 16, "checkpoint_every": 0, "sample_every": 10**6},
    "eval": {"every": 0},
}
plugins = Plugins()
def build(**train):
    recipe = {**tables, "train": {**tables["train"], **train}}
    return Trainer(validate(recipe, plugins.registry), plugins)

trainer = build()
params = sum(p.numel() for p in trainer.generator.parameters())
params += sum(p.numel() for p in trainer.discriminator.parameters())
trainer.train_step(0)
trainer.step = 1
start = time.perf_counter()
path = trainer.save_checkpoint()
save = time.perf_counter() - start
size = sum(f.stat().st_size for f in path.iterdir())
trainer.directory.release()
del trainer
start = time.perf_counter()
fresh = build(resume="never")
fresh_s = time.perf_counter() - start
fresh.directory.release()
del fresh
start = time.perf_counter()
resumed = build(steps=2)
resume = time.perf_counter() - start - fresh_s
assert resumed.step == 1
print(json.dumps({"millions": params / 1e6, "save_s": save, "resume_s": resume,
                  "bytes": size, "peak_mib": peak[0]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 200])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for millions in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.workdir, prefix="ckpt-scale-") as tmp:
            env = {**os.environ, "GANFORGE_CACHE_DIR": str(Path(tmp) / "cache")}
            done = subprocess.run(
                [sys.executable, "-c", WORKER, str(millions), str(Path(tmp) / "run")],
                capture_output=True,
                text=True,
                env=env,
            )
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nCPU: {os.cpu_count()} cores; one process, fp32, Adam, EMA of G")
    print("| G + D parameters | checkpoint | save | resume (reading it) | peak RssAnon |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['millions']:,.0f} M | {r['bytes'] / 2**30:.2f} GiB | {r['save_s']:.1f} s | "
            f"{r['resume_s']:.1f} s | {r['peak_mib'] / 1024:.1f} GiB |"
        )


if __name__ == "__main__":
    main()
