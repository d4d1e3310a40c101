"""How fast sharded dataset formats deliver random-order uint8 training batches, beside
ganforge's store.

ganforge keeps a prepared data set as one uint8 ``images.npy`` (and ``labels.npy``), memory
mapped, and gathers each batch with one ``torch.index_select`` in the training process. This
script writes the same synthetic images (``--images`` of them, 3×64×64 uint8 RGB, coarse
random-noise blocks upsampled 8×, seed 0, with integer labels) into

* (a) ganforge's store: one ``.npy`` written through ``np.lib.format.open_memmap``;
* (b) litdata: ``litdata.optimize`` (no compression, ``chunk_bytes`` 64 MB), read with
  ``litdata.StreamingDataset``, once with its defaults and once set for random access
  (``batch_decode=0``: decode only the item asked for; ``item_shuffle_window=0``);
* (c) mosaicml-streaming: ``MDSWriter`` (image ``ndarray:uint8:3,64,64``, label ``int``, no
  compression, 64 MB shards), read with ``streaming.StreamingDataset(local=...)``;
* (d) webdataset: tar shards of raw image bytes (``.raw``) and labels (``.cls``), ~64 MB
  each, read in order through a shuffle buffer (webdataset has no random access);

and times, for each: the write (seconds, into the page cache, no fsync), the size on disk, and
the images/s delivered in batches of ``--batch`` (256) in a random order

* in one process: for (a) ``torch.from_numpy(memmap).index_select(0, idx)`` with random
  ``idx``; for (b) and (c) ``dataset[i]`` for ``--batch`` random indices, stacked into one
  tensor; (d) has no random access, so it has no number here;
* through a torch ``DataLoader`` with ``--workers`` (2) worker processes, batch 256 and the
  library's own shuffling, as each library's documentation shows it: (b) ``StreamingDataset(
  shuffle=True)`` in ``litdata.StreamingDataLoader``; (c) ``StreamingDataset(shuffle=True)``
  in ``torch.utils.data.DataLoader``; (d) ``WebDataset(shardshuffle=...).shuffle(1000)``
  batched in the workers, in ``wds.WebLoader``. (a) needs no loader: its gather runs in the
  training process.

The page cache is warmed (every file read once, and each measured path run once) before
timing. Each rate is the median of ``--reps`` timed windows of about ``--seconds`` each. A
loader whose epoch ends inside a window starts its next epoch inside it, as training would.

Needs only numpy and torch: a library that is not installed (or fails to import) is skipped,
and the output says so. (mosaicml-streaming imports torchvision when it is imported, so it
needs a torchvision built for the installed torch; ``--formats`` runs a subset, e.g.
``--formats npy,mds`` from another environment.) The synthetic images are made once and
kept under ``--workdir``; each format is written anew on every run (its write is timed). The
output ends with a Markdown table. Time it only on an otherwise idle machine.

    python benchmarks/formats.py                      # 100,000 images, /tmp/ganforge_formats
    python benchmarks/formats.py --images 2000 --seconds 0.5 --reps 2   # a quick check
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIZE = 64
SHAPE = (3, SIZE, SIZE)
BLOCK = 8  # the noise is drawn at (SIZE / BLOCK)² and upsampled, so images are not pure noise
CLASSES = 10
SHARD_BYTES = 64 << 20
SHUFFLE_BUFFER = 1000


# --- the synthetic data ------------------------------------------------------------------


def make_source(workdir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic images and labels (made once per ``count``, then read back)."""
    folder = workdir / f"source_{count}"
    images_path, labels_path = folder / "images.npy", folder / "labels.npy"
    if not (images_path.exists() and labels_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        tmp = folder / "images.tmp.npy"
        images = np.lib.format.open_memmap(tmp, "w+", np.uint8, (count, *SHAPE))
        small = SIZE // BLOCK
        for start in range(0, count, 4096):
            n = min(4096, count - start)
            noise = rng.integers(0, 256, (n, 3, small, small), dtype=np.uint8)
            images[start : start + n] = noise.repeat(BLOCK, axis=2).repeat(BLOCK, axis=3)
        images.flush()
        del images
        np.save(labels_path, rng.integers(0, CLASSES, count, dtype=np.int64))
        tmp.rename(images_path)
    return np.load(images_path), np.load(labels_path)


# --- helpers -----------------------------------------------------------------------------


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def warm(folder: Path) -> None:
    """Read every file under ``folder`` once, so that timing starts from the page cache."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(8 << 20):
                    pass


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "—"


def load(module: str, dist: str) -> tuple[Any | None, str]:
    """The module, or None and why it cannot be used."""
    try:
        return importlib.import_module(module), ""
    except ModuleNotFoundError as e:
        return None, f"not installed ({dist}: {e})"
    except Exception as e:  # a package that installs but fails to import
        return None, f"fails to import: {type(e).__name__}: {e}"


def windows(step: Callable[[], int], seconds: float, reps: int) -> tuple[float, list[float]]:
    """Median images/s over ``reps`` windows of about ``seconds``; ``step`` returns how many
    images it delivered. One untimed call first."""
    step()
    rates = []
    for _ in range(reps):
        start, images = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < seconds:
            images += step()
        rates.append(images / elapsed)
    return statistics.median(rates), rates


def stream_step(make: Callable[[], Iterator], count: Callable[[Any], int]) -> Callable[[], int]:
    """A step that takes the next batch from a loader, starting a new epoch when one ends."""
    state = {"it": iter(make())}

    def step() -> int:
        try:
            batch = next(state["it"])
        except StopIteration:
            state["it"] = iter(make())
            batch = next(state["it"])
        return count(batch)

    return step


def random_batches(count: int, batch: int, seed: int) -> Callable[[], torch.Tensor]:
    """Random indices, ``batch`` at a time, from a new permutation each epoch."""
    gen = torch.Generator().manual_seed(seed)
    state = {"perm": torch.randperm(count, generator=gen), "at": 0}

    def next_idx() -> torch.Tensor:
        if state["at"] + batch > count:
            state["perm"], state["at"] = torch.randperm(count, generator=gen), 0
        idx = state["perm"][state["at"] : state["at"] + batch]
        state["at"] += batch
        return idx

    return next_idx


def check(what: str, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape or not np.array_equal(got, want):
        raise SystemExit(f"{what}: the stored image differs from the source")


def images_of(batch: Any) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch[0]


# --- the formats -------------------------------------------------------------------------
# Each returns a row: write seconds, disk bytes, single-process rate, loader rate, notes.


def bench_npy(src, labels, root: Path, args) -> dict:
    folder = fresh(root / "npy")
    start = time.perf_counter()
    folder.mkdir(parents=True)
    images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.uint8, src.shape)
    labs = np.lib.format.open_memmap(folder / "labels.npy", "w+", np.int64, labels.shape)
    for at in range(0, len(src), 256):  # ganforge's rows.py writes in chunks of 256 rows
        images[at : at + 256] = src[at : at + 256]
        labs[at : at + 256] = labels[at : at + 256]
    images.flush()
    labs.flush()
    del images, labs
    write = time.perf_counter() - start
    warm(folder)

    images = torch.from_numpy(np.load(folder / "images.npy", mmap_mode="r+"))
    labs = torch.from_numpy(np.load(folder / "labels.npy", mmap_mode="r+"))
    next_idx = random_batches(len(src), args.batch, seed=1)
    idx = next_idx()
    check("npy", images.index_select(0, idx).numpy(), src[idx.numpy()])

    def step() -> int:
        idx = next_idx()
        x = images.index_select(0, idx)
        labs.index_select(0, idx)
        return len(x)

    single, reps = windows(step, args.seconds, args.reps)
    return {
        "write": write,
        "disk": disk_bytes(folder),
        "single": single,
        "single_reps": reps,
        "loader": None,
        "loader_reps": None,
        "notes": f"threads={torch.get_num_threads()}; no loader needed: the gather runs in "
        "the training process",
    }


class LitItem:
    """litdata.optimize's fn: one sample by index, read from the source .npy files."""

    def __init__(self, images: Path, labels: Path):
        self.paths, self.arrays = (images, labels), None

    def __call__(self, i: int) -> dict:
        if self.arrays is None:
            self.arrays = tuple(np.load(p, mmap_mode="r") for p in self.paths)
        images, labels = self.arrays
        return {"image": np.ascontiguousarray(images[i]), "label": int(labels[i]), "index": i}


def bench_litdata(litdata, src, labels, root: Path, args) -> list[tuple[str, dict]]:
    folder = fresh(root / "litdata")
    source = args.workdir / f"source_{len(src)}"
    start = time.perf_counter()
    litdata.optimize(
        fn=LitItem(source / "images.npy", source / "labels.npy"),
        inputs=list(range(len(src))),
        output_dir=str(folder),
        chunk_bytes="64MB",
        compression=None,
        num_workers=args.workers,
        verbose=False,
    )
    write = time.perf_counter() - start
    warm(folder)
    chunks = len(list(folder.glob("*.bin")))

    def caches() -> set[Path]:
        return set(Path.home().glob(".lightning*")) | set(Path("/cache").glob("*"))

    before = caches()
    ds = litdata.StreamingDataset(str(folder))
    probe = range(0, len(src), max(1, len(src) // 1000))
    moved = sum(ds[i]["index"] != i for i in probe)
    order_kept = f"stored order ≠ input order at {moved} of {len(probe)} probed indices"
    rows = []
    # The defaults, then the settings for random access: decode only the item asked for
    # (batch_decode=0) and permute each chunk whole (item_shuffle_window=0).
    for label, settings in (
        ("defaults", {}),
        ("batch_decode=0, item_shuffle_window=0", {"batch_decode": 0, "item_shuffle_window": 0}),
    ):
        ds = litdata.StreamingDataset(str(folder), **settings)
        assert len(ds) == len(src), (len(ds), len(src))
        # optimize's workers share one queue, so the stored order is not the input order
        # (keep_data_ordered=False, its default): each sample carries its source index.
        for i in (0, len(src) // 2, len(src) - 1):
            item = ds[i]
            check("litdata", np.asarray(item["image"]), src[item["index"]])
            assert item["label"] == labels[item["index"]]
        next_idx = random_batches(len(src), args.batch, seed=1)

        def step(ds=ds, next_idx=next_idx) -> int:
            items = [ds[i] for i in next_idx().tolist()]
            x = torch.from_numpy(np.stack([it["image"] for it in items]))
            torch.tensor([it["label"] for it in items])
            return len(x)

        single, single_reps = windows(step, args.seconds, args.reps)
        loader = litdata.StreamingDataLoader(
            litdata.StreamingDataset(str(folder), shuffle=True, **settings),
            batch_size=args.batch,
            num_workers=args.workers,
            persistent_workers=True,
        )
        loaded, loader_reps = windows(
            stream_step(lambda loader=loader: loader, lambda b: len(images_of(b))),
            args.seconds,
            args.reps,
        )
        if settings:
            order = "loader order: chunks shuffled, each chunk permuted whole"
        else:
            order = (
                "batch_decode auto = 256 rows for this numpy data, so dataset[i] decodes "
                "its 256-row window; loader order: chunks shuffled, then 256-item blocks"
            )
        rows.append(
            (
                label,
                {
                    "write": write,
                    "disk": disk_bytes(folder),
                    "single": single,
                    "single_reps": single_reps,
                    "loader": loaded,
                    "loader_reps": loader_reps,
                    "notes": f"{order}; StreamingDataLoader; {chunks} chunks; {order_kept}",
                },
            )
        )
    made = caches() - before
    if made:
        rows[-1][1]["notes"] += "; made " + ", ".join(str(p) for p in sorted(made))
    return rows


def bench_mds(streaming, src, labels, root: Path, args) -> dict:
    folder = fresh(root / "mds")
    columns = {"image": f"ndarray:uint8:{','.join(map(str, SHAPE))}", "label": "int"}
    start = time.perf_counter()
    with streaming.MDSWriter(
        out=str(folder), columns=columns, compression=None, size_limit=SHARD_BYTES
    ) as writer:
        for i in range(len(src)):
            writer.write({"image": src[i], "label": int(labels[i])})
    write = time.perf_counter() - start
    warm(folder)

    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = streaming.StreamingDataset(local=str(folder), shuffle=False, batch_size=args.batch)
    assert len(ds) == len(src), (len(ds), len(src))
    for i in (0, len(src) // 2, len(src) - 1):
        check("mds", np.asarray(ds[i]["image"]), src[i])
    next_idx = random_batches(len(src), args.batch, seed=1)

    def step() -> int:
        items = [ds[i] for i in next_idx().tolist()]
        x = torch.from_numpy(np.stack([it["image"] for it in items]))
        torch.tensor([it["label"] for it in items])
        return len(x)

    single, single_reps = windows(step, args.seconds, args.reps)

    shuffled = streaming.StreamingDataset(local=str(folder), shuffle=True, batch_size=args.batch)
    loader = torch.utils.data.DataLoader(
        shuffled, batch_size=args.batch, num_workers=args.workers, persistent_workers=True
    )
    loaded, loader_reps = windows(
        stream_step(lambda: loader, lambda b: len(images_of(b))), args.seconds, args.reps
    )
    return {
        "write": write,
        "disk": disk_bytes(folder),
        "single": single,
        "single_reps": single_reps,
        "loader": loaded,
        "loader_reps": loader_reps,
        "notes": "torch DataLoader; state in shared memory (/dev/shm)",
    }


def wds_decode(sample: dict) -> tuple[np.ndarray, int]:
    return np.frombuffer(sample["raw"], np.uint8).reshape(SHAPE), int(sample["cls"])


def wds_collate(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([s[0] for s in samples]))
    return images, torch.tensor([s[1] for s in samples])


def wds_pipeline(wds, shards: list[str], batch: int):
    return (
        wds.WebDataset(shards, shardshuffle=len(shards), seed=0, empty_check=False)
        .shuffle(SHUFFLE_BUFFER)
        .map(wds_decode)
        .batched(batch, collation_fn=wds_collate, partial=True)
    )


def bench_wds(wds, src, labels, root: Path, args) -> dict:
    folder = fresh(root / "wds")
    folder.mkdir(parents=True)
    start = time.perf_counter()
    with wds.ShardWriter(
        str(folder / "shard-%06d.tar"), maxsize=SHARD_BYTES, maxcount=10**9, verbose=0
    ) as sink:
        for i in range(len(src)):
            sink.write({"__key__": f"{i:08d}", "raw": src[i].tobytes(), "cls": int(labels[i])})
    write = time.perf_counter() - start
    warm(folder)
    shards = sorted(str(p) for p in folder.glob("*.tar"))

    first = next(iter(wds.WebDataset(shards[:1], shardshuffle=False, empty_check=False)))
    check("wds", wds_decode(first)[0], src[int(first["__key__"])])

    one = wds_pipeline(wds, shards, args.batch)
    stream, stream_reps = windows(
        stream_step(lambda: one, lambda b: len(b[0])), args.seconds, args.reps
    )
    loader = wds.WebLoader(
        wds_pipeline(wds, shards, args.batch),
        batch_size=None,
        num_workers=args.workers,
        persistent_workers=True,
    )
    loaded, loader_reps = windows(
        stream_step(lambda: loader, lambda b: len(b[0])), args.seconds, args.reps
    )
    return {
        "write": write,
        "disk": disk_bytes(folder),
        "single": None,
        "single_reps": None,
        "loader": loaded,
        "loader_reps": loader_reps,
        "notes": f"no random access: shards in shuffled order, samples through a "
        f"{SHUFFLE_BUFFER}-sample shuffle buffer; one process streams {stream:,.0f}/s; "
        f"{len(shards)} shards",
    }


# --- main --------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name, and which of avx512_bf16 / amx_* its flags hold."""
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return f"{name} (flags: {' '.join(wanted) or 'none of avx2/avx512/amx'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ganforge_formats"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--seconds", type=float, default=3.0, help="one timed window")
    parser.add_argument("--reps", type=int, default=3, help="timed windows per measurement")
    parser.add_argument(
        "--formats", default="npy,litdata,mds,wds", help="comma-separated: npy,litdata,mds,wds"
    )
    args = parser.parse_args()
    wanted = args.formats.split(",")

    print(f"# ganforge dataset-format benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(
        f"cpu: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
    )
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{args.images:,} images {'×'.join(map(str, SHAPE))} uint8, batch {args.batch}, "
        f"{args.workers} loader workers, median of {args.reps} windows of {args.seconds} s"
    )

    t0 = time.perf_counter()
    src, labels = make_source(args.workdir, args.images)
    print(f"source ready in {time.perf_counter() - t0:.1f} s ({src.nbytes / 2**20:,.0f} MiB)")
    root = args.workdir / f"formats_{args.images}"
    root.mkdir(parents=True, exist_ok=True)

    specs = {
        "npy": ("ganforge store (.npy memmap)", None, None, bench_npy),
        "litdata": ("litdata", "litdata", "litdata", bench_litdata),
        "mds": ("mosaicml-streaming (MDS)", "streaming", "mosaicml-streaming", bench_mds),
        "wds": ("webdataset (tar)", "webdataset", "webdataset", bench_wds),
    }
    rows = []
    for key in wanted:
        name, module, dist, fn = specs[key]
        ver = version(dist) if dist else f"numpy {np.__version__}, torch {torch.__version__}"
        if module is not None:
            lib, why = load(module, dist)
            if lib is None:
                print(f"\n## {name}: skipped: {why}", flush=True)
                rows.append((name, ver, None, f"skipped: {why}"))
                continue
        print(f"\n## {name} {ver}", flush=True)
        start = time.perf_counter()
        result = fn(src, labels, root, args) if module is None else fn(lib, src, labels, root, args)
        for label, r in result if isinstance(result, list) else [("", result)]:
            title = f"{name} ({label})" if label else name
            print(f"{title}: write {r['write']:.1f} s, disk {r['disk'] / 2**20:,.0f} MiB")
            for k in ("single", "loader"):
                if r[k] is not None:
                    each = ", ".join(f"{x:,.0f}" for x in r[f"{k}_reps"])
                    print(f"  {k}: median {r[k]:,.0f} images/s (windows: {each})")
            print(f"  notes: {r['notes']}")
            rows.append((title, ver, r, r["notes"]))
        print(f"({time.perf_counter() - start:.0f} s for this format)", flush=True)

    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(
        "| format | version | write s | disk MiB | img/s one process, random access "
        f"| img/s DataLoader, {args.workers} workers | notes |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for name, ver, r, notes in rows:
        if r is None:
            print(f"| {name} | {ver} | — | — | — | — | {notes} |")
            continue
        single = "n/a" if r["single"] is None else f"{r['single']:,.0f}"
        loader = "n/a" if r["loader"] is None else f"{r['loader']:,.0f}"
        print(
            f"| {name} | {ver} | {r['write']:.1f} | {r['disk'] / 2**20:,.0f} | {single} "
            f"| {loader} | {notes} |"
        )


if __name__ == "__main__":
    main()
