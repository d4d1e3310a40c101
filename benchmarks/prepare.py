"""Preparing a folder of images into ganforge's data cache, against a plain PIL decode.

For each size N: a folder of N synthetic PNGs (64×64 RGB by default; ``--jpeg`` writes 512×384
JPEGs instead, decoded to the resolution), made once under ``--workdir``. Then, each in a fresh
process, so that memory is its own:

- ``ganforge``: the ``hf`` source through ``open_store`` (the first start: listing, decoding on
  every core, writing the store a chunk at a time), images/s and peak private memory
  (``RssAnon``, polled every 20 ms: mapped file pages are shared, not counted);
- ``plain``: a ``ThreadPoolExecutor`` of as many threads as cores decoding the same files with
  PIL (open, convert, center-crop resize) into one array: what most users write by hand;
- ``cached``: a second ``open_store`` of the same source (a cached start: the folder's
  fingerprint, the store's checks), seconds; then two processes doing it at once (a launch on
  one node: the first lists the folder, the other reads its listing), the slower one's.

Imports (torch, PIL) are outside every timing; the listing of the folder is inside both.

    python benchmarks/prepare.py --sizes 10000 100000
    python benchmarks/prepare.py --sizes 20000 --jpeg --resolution 128
    python benchmarks/prepare.py --sizes 1000000 --distinct 100000 --plain-max 100000

Targets (the data issue): ganforge ≥ 0.9× the plain decode's images/s; peak private memory
independent of N (below 1 GB at 1M); a cached start under 10 s at 1M files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, os, sys, threading, time
from pathlib import Path

def rss_anon_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

peak = [rss_anon_kib()]
def poll():
    while True:
        peak[0] = max(peak[0], rss_anon_kib())
        time.sleep(0.02)
threading.Thread(target=poll, daemon=True).start()

mode, folder, resolution, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
base = rss_anon_kib()
start = time.perf_counter()
if mode == "plain":
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    from PIL import Image, ImageOps
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix in (".png", ".jpg"))
    files = files[: int(os.environ.get("PLAIN_MAX", len(files)))]
    start = time.perf_counter()
    out = np.empty((len(files), 3, resolution, resolution), np.uint8)
    def one(i):
        with Image.open(files[i]) as img:
            img.draft(None, (resolution, resolution))
            img = ImageOps.fit(img.convert("RGB"), (resolution, resolution), Image.LANCZOS)
            out[i] = np.asarray(img).transpose(2, 0, 1)
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(one, range(len(files))))
    n = len(files)
else:
    from ganforge.data import open_store
    from ganforge_plugins.hf import hf_source
    start = time.perf_counter()  # from the listing of the folder on, as for plain
    data = open_store(hf_source(resolution=resolution, path=folder), resolution, Path(cache))
    n = len(data)
seconds = time.perf_counter() - start
time.sleep(0.05)
print(json.dumps({"n": n, "seconds": seconds, "peak_mib": (peak[0] - base) / 1024}))
"""


def make_folder(root: Path, n: int, jpeg: bool, distinct: int | None) -> Path:
    """N synthetic images (blobs on noise), in 10 class folders; made once. With
    ``distinct``, only that many are written and the others are hard links to them (a
    million files in minutes; each link is its own file to list, stat, open and decode)."""
    import numpy as np
    from PIL import Image

    suffix = "jpg" if jpeg else "png"
    folder = root / (f"{'jpeg' if jpeg else 'png'}_{n}" + (f"_of_{distinct}" if distinct else ""))
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    size = (384, 512) if jpeg else (64, 64)
    for i in range(n):
        sub = folder / f"class{i % 10}"
        if i < 10:
            sub.mkdir(parents=True, exist_ok=True)
        if distinct and i >= distinct:
            first = i % distinct
            os.link(
                folder / f"class{first % 10}" / f"{first:07d}.{suffix}", sub / f"{i:07d}.{suffix}"
            )
            continue
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize(size[::-1], Image.BILINEAR)
        img.save(sub / f"{i:07d}.{suffix}", quality=90)
    done.touch()
    return folder


def run(mode: str, folder: Path, resolution: int, cache: Path, processes: int = 1, **env) -> dict:
    """``processes`` workers started together (a launch on one node); the slowest's result."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **env}
    args = [sys.executable, "-c", WORKER, mode, str(folder), str(resolution), str(cache)]
    started = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(processes)
    ]
    results = []
    for proc in started:
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{mode} failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return max(results, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--jpeg", action="store_true", help="512×384 JPEGs instead of PNGs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ganforge_prepare_bench"))
    parser.add_argument(
        "--distinct", type=int, help="write this many images, hard-link the rest to them"
    )
    parser.add_argument(
        "--plain-max",
        type=int,
        help="the plain decode decodes only the first this many files (its images/s; it holds "
        "every image in memory: 12 GB at 1M)",
    )
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        folder = make_folder(args.workdir, n, args.jpeg, args.distinct)
        made = time.perf_counter() - t0
        cache = args.workdir / f"cache_{folder.name}_{args.resolution}"
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        limit = {"PLAIN_MAX": str(args.plain_max)} if args.plain_max else {}
        plain = run("plain", folder, args.resolution, cache, **limit)
        ours = run("ganforge", folder, args.resolution, cache)
        cached = run("ganforge", folder, args.resolution, cache)
        together = run("ganforge", folder, args.resolution, cache, processes=2)
        rows.append((n, made, plain, ours, cached, together))
    print(f"\nCPU: {os.cpu_count()} cores; images at {args.resolution} px")
    print(
        "| N | ganforge img/s | plain img/s | ratio | ganforge peak RssAnon | plain peak "
        "| cached start | cached start, 2 processes at once |"
    )
    print("|" + "---|" * 8)
    for n, _, plain, ours, cached, together in rows:
        rate, base = ours["n"] / ours["seconds"], plain["n"] / plain["seconds"]
        print(
            f"| {n:,} | {rate:,.0f} | {base:,.0f} | {rate / base:.2f} | "
            f"{ours['peak_mib']:,.0f} MiB | {plain['peak_mib']:,.0f} MiB | "
            f"{cached['seconds']:.1f} s | {together['seconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()
