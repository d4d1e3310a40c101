"""``ganforge generate``: samples of an exported generator written as images or arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganforge.components import grid_labels
from ganforge.errors import GanforgeError
from ganforge.export import GeneratorInfo, generate, load_generator
from ganforge.plugins import Plugins
from ganforge.runfiles import atomic_write, save_grid, save_scatter


def class_index(label: str, info: GeneratorInfo) -> int:
    """A class given by index or by name, checked against the export's classes."""
    if not info.num_classes:
        raise GanforgeError("--class is for conditional models; this generator has no classes")
    names = list(info.class_names or [])
    if label in names:
        return names.index(label)
    try:
        index = int(label)
    except ValueError:
        known = f": {', '.join(names)}" if names else f" (0..{info.num_classes - 1})"
        raise GanforgeError(f"unknown class {label!r}; the classes are{known}") from None
    if not 0 <= index < info.num_classes:
        raise GanforgeError(f"class {index} is out of range 0..{info.num_classes - 1}")
    return index


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise GanforgeError(f"--device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GanforgeError(f"--device {name!r}: no CUDA device is available")
    try:
        if device.type == "meta":
            raise RuntimeError("holds no data")
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError, NotImplementedError) as err:
        raise GanforgeError(f"--device {name!r} cannot be used: {err}") from None
    return device


def write_samples(
    model: str | Path,
    *,
    num: int,
    seed: int = 0,
    out: str | Path | None = None,
    out_dir: str | Path | None = None,
    truncation: float | None = None,
    label: str | None = None,
    device: str = "cpu",
    plugins: Plugins | None = None,
) -> list[Path]:
    """Sample ``num`` outputs of an export and write them; return the files written.

    ``out`` takes one ``.png`` (an image grid, or a scatter plot for point data) or ``.npy``
    (the raw samples, float32); ``out_dir`` one PNG per image. Conditional generators sample
    every class in turn unless ``label`` names one.
    """
    if num < 1:
        raise GanforgeError(f"--num must be at least 1, not {num}")
    suffix = Path(out).suffix.lower() if out else None
    if out and suffix not in (".png", ".npy"):
        raise GanforgeError(f"--out {out}: write a .png (grid) or a .npy (array)")
    generator, info = load_generator(model, _device(device), plugins)
    if truncation is not None and not info.supports_truncation:
        raise GanforgeError(f"generator {info.name!r} does not support --truncation")
    labels = None
    if label is not None:
        labels = torch.full((num,), class_index(label, info))
    elif info.num_classes:
        labels = grid_labels(num, info.num_classes)
    samples = generate(generator, info, num, seed, labels=labels, truncation=truncation).cpu()

    if out_dir is not None:
        if info.output != "image":
            raise GanforgeError("--out-dir writes images; for point data use --out FILE.npy")
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            save_grid(folder / f"sample_{i:05d}.png", samples[i : i + 1], nrow=1, pad=0)
            for i in range(num)
        ]
    out = Path(out)
    if suffix == ".npy":
        array = samples.float().numpy()

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to tmp
                np.save(f, array, allow_pickle=False)

        return [atomic_write(out, save)]
    if info.output == "points":
        return [save_scatter(out, samples, samples)]
    nrow = max(num // info.num_classes, 1) if info.num_classes and label is None else None
    return [save_grid(out, samples, nrow)]
