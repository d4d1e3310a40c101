"""How many images per second the host side of ganforge's data path delivers.

The host side of a step's batch, as ``BatchSource`` does it: the sampler's indices for the
next global batch, one ``index_select`` of uint8 images from the in-memory store, and the
labels. Conversion to float and scaling to [-1, 1] happen on the device, after the transfer,
so they are not host work; the script also times a CPU float conversion, to show why.
Where a GPU is present it also times the whole path the trainer uses (``BatchSource.next``
on the GPU: the gather into pinned staging memory, the asynchronous copy and the conversion on
the device); a CPU-only torch cannot pin. Synthetic uint8 RGB images (``--images`` of them)
at 32×32 and 64×64, batch 512.

``ratio`` (printed last) = images/s delivered at 64×64 ÷ 65,000, the images/s a DCGAN-64 step
consumes on an H100 at batch 512 (``../shared/FACTS.md``).

    python benchmarks/input_pipeline.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ganforge.data import BatchSource, ImageData, ShardedSampler

H100_DCGAN64_IMAGES_PER_S = 65_000


def rate(fn, batch: int, seconds: float, reps: int = 5) -> float:
    """Median images/s of ``reps`` timed runs of ``fn`` (each about ``seconds`` long)."""
    fn()  # warm up
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / reps:
        fn()
        calls += 1
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rates.append(calls * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed per measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    rng = np.random.default_rng(0)

    rows, delivered = [], {}
    for size in (32, 64):
        images = rng.integers(0, 256, (args.images, 3, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, args.images).astype(np.int64)
        data = ImageData(images, labels, [str(i) for i in range(10)])
        sampler = ShardedSampler(len(data), args.batch, seed=0)
        source = BatchSource(data, sampler, torch.device("cpu"))

        def host_batch(source=source, sampler=sampler):
            idx = sampler.next_indices()
            return source.images.index_select(0, idx), source.labels.index_select(0, idx)

        delivered[size] = rate(host_batch, args.batch, args.seconds)
        rows.append(
            (f"{size}x{size}", "indices + uint8 gather + labels (host side)", delivered[size])
        )
        if cuda:  # the whole path the trainer uses, synchronised after every batch
            on_gpu = BatchSource(data, sampler, torch.device("cuda"))

            def device_batch(on_gpu=on_gpu):
                batch = on_gpu.next(with_labels=True)
                torch.cuda.synchronize()
                return batch

            rows.append(
                (
                    f"{size}x{size}",
                    "BatchSource.next on the GPU: pinned staging, async copy, float on the device",
                    rate(device_batch, args.batch, args.seconds),
                )
            )
        one = source.images[: args.batch]
        rows.append(
            (
                f"{size}x{size}",
                "(reference) float conversion on the CPU",
                rate(lambda one=one: one.float().div_(127.5).sub_(1.0), args.batch, args.seconds),
            )
        )

    print(f"torch {torch.__version__}, {args.threads} thread(s), CUDA {'yes' if cuda else 'no'}")
    print(f"{args.images} synthetic RGB images per size, batch {args.batch}\n")
    print("| size | path | images/s |")
    print("|---|---|---:|")
    for size, what, value in rows:
        print(f"| {size} | {what} | {value:,.0f} |")
    print(f"\nratio {delivered[64] / H100_DCGAN64_IMAGES_PER_S:.2f}")


if __name__ == "__main__":
    main()
