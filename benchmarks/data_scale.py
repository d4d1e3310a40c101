"""Training from a small and a large data set: private memory per process, images/s, and
what a batch costs when the store is not in the page cache.

For each image folder given (``benchmarks/prepare.py`` makes them; each is prepared into the
data cache first, so every run here is a cached start):

- ``gather``: ``BatchSource.next`` on the CPU from the memory-mapped store, batch 256,
  images/s with the store in the page cache (``warm``) and with its pages dropped before every
  batch (``cold``: ``madvise``/``posix_fadvise`` DONTNEED; each row then comes from the disk,
  as it would from a store larger than RAM);
- ``train``: ``recipes/dcgan.toml`` on the folder at 64 px (width 16, batch 128) for
  ``--steps`` steps in 1 process and in 2 (``accelerate launch``, CPU), the peak private memory
  (``RssAnon``, polled every 50 ms) of each training process, and the median images/s of the
  logged steps after the first quarter.

    python benchmarks/data_scale.py /tmp/ganforge_prepare_bench/png_10000 \
        /tmp/ganforge_prepare_bench/png_1000000_of_100000

Targets (the data issue): peak private memory per process independent of N (within 150 MB)
with 1 and 2 processes; images/s from the large store ≥ 0.95× from the small one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [
    "data.resolution=64",
    "generator.width=16",
    "discriminator.width=16",
    "train.batch_size=128",
    "train.log_every=2",
    "train.sample_every=100000",
    "train.checkpoint_every=100000",
]


def rss_anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def training_processes(root: int) -> list[int]:
    """The processes under ``root`` that run the training loop (not a launcher)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ganforge" in argv and b"launch" not in argv:  # python -m ganforge RECIPE
            found.append(pid)
    return found


def train(folder: Path, processes: int, steps: int, cache: Path, work: Path) -> dict:
    out = work / f"run_{folder.name}_{processes}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"data.path={folder}", f"run.out_dir={out}", f"train.steps={steps}", *TRAIN]
    recipe = str(ROOT / "recipes" / "dcgan.toml")
    if processes == 1:
        command = [sys.executable, "-m", "ganforge", recipe, *overrides]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [
            shutil.which("accelerate", path=str(Path(sys.executable).parent)),
            "launch",
            "--config_file",
            str(ROOT / "configs" / "accelerate" / "multi_gpu.yaml"),
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(port),
            "-m",
            "ganforge",
            recipe,
            *overrides,
        ]
    env = {**os.environ, "GANFORGE_CACHE_DIR": str(cache), "ACCELERATE_USE_CPU": "1"}
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in training_processes(proc.pid):
            peaks[pid] = max(peaks.get(pid, 0), rss_anon_kib(pid))
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"training failed:\n{proc.stderr.read().decode()[-3000:]}")
    records = [json.loads(line) for line in next(out.rglob("metrics.jsonl")).open()]
    rates = [r["images_per_s"] for r in records if "images_per_s" in r]
    steady = rates[len(rates) // 4 :] or rates
    return {
        "peak_mib": sorted(round(k / 1024) for k in peaks.values()),
        "images_per_s": statistics.median(steady),
    }


GATHER = r"""
import json, mmap, os, sys, time
from pathlib import Path
import torch
from ganforge.data import BatchSource, ShardedSampler, _read_store

store, cold = Path(sys.argv[1]), sys.argv[2] == "cold"
data = _read_store(store)
source = BatchSource(data, ShardedSampler(len(data), 256, seed=0), torch.device("cpu"))
fd = os.open(store / "images.npy", os.O_RDONLY)

def drop():  # out of this process's mapping, then out of the page cache
    data.images._mmap.madvise(mmap.MADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

batches, seconds = 0, 0.0
source.next(False)
while seconds < 4.0:
    if cold:
        drop()
    start = time.perf_counter()
    source.next(False)
    seconds += time.perf_counter() - start
    batches += 1
print(json.dumps({"images_per_s": batches * 256 / seconds}))
"""


def gather(store: Path, mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", GATHER, str(store), mode], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"gather failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]


def prepared_store(folder: Path, cache: Path) -> tuple[Path, int]:
    """Prepare ``folder`` at 64 px in ``cache`` (once) and return its store and size."""
    from ganforge.data import open_store, store_folder
    from ganforge_plugins.hf import hf_source

    source = hf_source(resolution=64, path=str(folder))
    size = len(open_store(source, 64, cache))
    return store_folder(source, cache), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ganforge_data_scale_cache"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ganforge-data-scale-"))
    rows = []
    for folder in args.folders:
        store, size = prepared_store(folder.resolve(), args.cache)
        row = {"folder": folder.name, "n": size}
        row["store_gib"] = (store / "images.npy").stat().st_size / 2**30
        row["warm"], row["cold"] = gather(store, "warm"), gather(store, "cold")
        for processes in (1, 2):
            row[processes] = train(folder.resolve(), processes, args.steps, args.cache, work)
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nCPU: {os.cpu_count()} cores; {args.steps} steps of DCGAN-64 (width 16, batch 128)")
    print(
        "| N | store | gather, warm | gather, cold (from disk) | train img/s, 1 process "
        "| peak RssAnon, 1 process | train img/s, 2 processes | peak RssAnon, each of 2 |"
    )
    print("|" + "---|" * 8)
    for r in rows:
        print(
            f"| {r['n']:,} | {r['store_gib']:.2f} GiB | {r['warm']:,.0f} img/s | "
            f"{r['cold']:,.0f} img/s | {r[1]['images_per_s']:,.0f} | "
            f"{'/'.join(map(str, r[1]['peak_mib']))} MiB | {r[2]['images_per_s']:,.0f} | "
            f"{'/'.join(map(str, r[2]['peak_mib']))} MiB |"
        )


if __name__ == "__main__":
    main()
