"""Generator inputs derived from each training image (``[input] name = ...``): a box-downscaled
copy (super-resolution), the image itself (autoencoders) and a masked copy (inpainting).

Each runs on the device, on the batch in [-1, 1], without gradient; the core calls it once per
batch and hands the result to ``G(z, y, source=...)`` (and to a critic conditioned on it).

The ``pairs`` data source reads paired images from files (folders of pairs, or pix2pix's
side-by-side images); there the input is made from each sample's stored input instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganforge import hookimpl


class Downscale:
    """The image box-downscaled by ``factor`` (each output pixel the mean of a factor×factor
    block), as the 4× super-resolution benchmarks make their inputs."""

    def __init__(self, *, factor: int = 4):
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        self.factor = factor

    def shape(self, channels: int, resolution: int) -> tuple[int, int]:
        if resolution % self.factor:
            raise ValueError(f"resolution {resolution} does not divide by factor {self.factor}")
        return channels, resolution // self.factor

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, self.factor)


class Identity:
    """The image itself: what an autoencoder reconstructs."""

    def shape(self, channels: int, resolution: int) -> tuple[int, int]:
        return channels, resolution

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images


class Mask:
    """The image with a random square hole (filled with ``fill``), plus the hole as one more
    channel (1 inside): inpainting's input. The hole's side is ``size`` × the image's side, at
    a position drawn from the device's RNG."""

    def __init__(self, *, size: float = 0.5, fill: float = 0.0):
        if not 0 < size < 1:
            raise ValueError(f"size must be in (0, 1), got {size!r}")
        if not -1 <= fill <= 1:
            raise ValueError(f"fill must be in [-1, 1], got {fill!r}")
        self.size, self.fill = size, fill

    def shape(self, channels: int, resolution: int) -> tuple[int, int]:
        return channels + 1, resolution

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        side = max(1, round(self.size * h))
        top = torch.randint(0, h - side + 1, (n, 1, 1, 1), device=images.device)
        left = torch.randint(0, w - side + 1, (n, 1, 1, 1), device=images.device)
        rows = torch.arange(h, device=images.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=images.device).view(1, 1, 1, w)
        hole = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        masked = torch.where(hole, torch.full_like(images, self.fill), images)
        return torch.cat([masked, hole.to(images.dtype)], dim=1)


@hookimpl
def ganforge_register_inputs(register):
    register("downscale", Downscale)
    register("identity", Identity)
    register("mask", Mask)


# --------------------------------------------------------------------------- paired files

PAIR_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _pair_files(root: Path, layout: str, input_dir: str, target_dir: str, seed: int) -> list:
    """The pairs under ``root``, in name order: ``(name, input file, target file)``, or
    ``(name, file, file)`` for side-by-side images. Unpaired domains: every target (cycled
    when the inputs are more) beside an input drawn by a permutation seeded with ``seed``."""
    from ganforge.errors import DataError

    def images(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise DataError(f"pairs: {folder} is not a folder")
        return {
            p.stem: p
            for p in folder.iterdir()
            if p.suffix.lower() in PAIR_SUFFIXES and not p.name.startswith(".")
        }

    if layout == "side_by_side":
        found = images(root)
        pairs = [(name, path, path) for name, path in sorted(found.items())]
    elif layout == "unpaired":
        inputs = [p for _, p in sorted(images(root / input_dir).items())]
        targets = [p for _, p in sorted(images(root / target_dir).items())]
        if not inputs or not targets:
            raise DataError(f"pairs: {root / input_dir} and {root / target_dir} need images")
        count = max(len(inputs), len(targets))
        order = np.random.default_rng(seed).permutation(count) % len(inputs)
        pairs = [(f"{k:07d}", inputs[order[k]], targets[k % len(targets)]) for k in range(count)]
    else:
        inputs, targets = images(root / input_dir), images(root / target_dir)
        unmatched = sorted(set(inputs) ^ set(targets))
        if unmatched:
            raise DataError(
                f"pairs: {len(unmatched)} image(s) have no partner of the same name in "
                f"{root / input_dir} and {root / target_dir}, e.g. {unmatched[0]!r}"
            )
        pairs = [(name, inputs[name], targets[name]) for name in sorted(inputs)]
    if not pairs:
        raise DataError(f"pairs: {root} holds no pairs of images")
    return pairs


def _open_pair(a: Path, b: Path, layout: str, input_side: str):
    """A pair's (input, target) as PIL images: the halves of ``a`` side by side, else ``a``
    and ``b``."""
    from PIL import Image

    with Image.open(a) as first:
        first.load()
        if layout == "side_by_side":
            half = first.width // 2
            left = first.crop((0, 0, half, first.height))
            right = first.crop((half, 0, 2 * half, first.height))
            return (left, right) if input_side == "left" else (right, left)
        source = first.copy()
    with Image.open(b) as second:
        second.load()
        return source, second.copy()


def _as_array(img, side: int, grey: bool, box: bool = False) -> np.ndarray:
    """``img`` resized to side×side as uint8 C×side×side (grey or RGB); ``box``: shrink by box
    averages (exact for an input saved enlarged by repetition), else Lanczos."""
    from PIL import Image

    shrink = img.width >= side and img.height >= side
    method = Image.BOX if box and shrink else Image.LANCZOS
    out = np.asarray(img.convert("L" if grey else "RGB").resize((side, side), method))
    return (out[None] if out.ndim == 2 else out.transpose(2, 0, 1)).copy()


def pairs_source(
    *,
    resolution: int,
    path: str,
    layout: str = "folders",
    input_dir: str = "input",
    target_dir: str = "target",
    input_side: str = "left",
    channels: int = 3,
    input_channels: int = 0,
    input_resolution: int = 0,
    seed: int = 0,
):
    """Paired images from files: each sample a target and the generator's input for it.

    ``layout = "folders"``: ``path/<input_dir>/NAME.png`` and ``path/<target_dir>/NAME.png``
    (any image type), paired by name; ``"side_by_side"``: each image in ``path`` holds both
    halves (pix2pix's data sets), the input on ``input_side``; ``"unpaired"``: two domains
    (CycleGAN's), the images of the two folders in any numbers and names, each target beside
    an input drawn by a permutation seeded with ``seed`` (the pairing carries no meaning: a
    term comparing G's output with its target, or a critic conditioned on the input, is
    refused). Targets are resized to
    ``resolution``, inputs to ``input_resolution`` (default the same) and stored at the
    target's size (nearest-neighbour: ``[input] name = "downscale"`` with the ratio as its
    factor gives them back exactly; at the same size ``"identity"``). ``channels`` and
    ``input_channels`` (default the same) are 1 (grey) or 3 (RGB).

    The store holds each pair as one image of ``channels + input_channels`` channels,
    decoded a chunk at a time in bounded memory; the recipe's ``[input]`` makes G's input
    from the stored one.
    """
    import hashlib

    from ganforge.data import DataSource
    from ganforge.rows import Chunk, Rows

    if layout not in ("folders", "side_by_side", "unpaired"):
        raise ValueError(f"layout must be 'folders', 'side_by_side' or 'unpaired', got {layout!r}")
    if input_side not in ("left", "right"):
        raise ValueError(f"input_side must be 'left' or 'right', got {input_side!r}")
    input_channels = input_channels or channels
    input_resolution = input_resolution or resolution
    if channels not in (1, 3) or input_channels not in (1, 3):
        raise ValueError("channels and input_channels must be 1 or 3")
    if not resolution or resolution % input_resolution:
        raise ValueError(
            f"data.resolution {resolution} must be a multiple of input_resolution "
            f"{input_resolution}"
        )
    root = Path(path).expanduser()
    pairs = _pair_files(root, layout, input_dir, target_dir, seed)
    digest = hashlib.sha256()
    for name, a, b in pairs:
        for file in {a, b}:
            stat = file.stat()
            digest.update(f"{name}\0{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    options = f"{layout}-{input_side}-c{channels}-{input_channels}-r{input_resolution}-s{seed}"
    fingerprint = f"pairs-v1-{options}-{resolution}-{digest.hexdigest()[:20]}"
    scale = resolution // input_resolution

    def decode_pair(a: Path, b: Path) -> np.ndarray:
        source, target = _open_pair(a, b, layout, input_side)
        made = _as_array(source, input_resolution, input_channels == 1, box=True)
        made = made.repeat(scale, 1).repeat(scale, 2)  # stored at the target's size
        return np.concatenate([_as_array(target, resolution, channels == 1), made])

    def decode(start: int, stop: int) -> Chunk:
        shape = (stop - start, channels + input_channels, resolution, resolution)
        samples, broken = np.zeros(shape, np.uint8), []
        for i, (name, a, b) in enumerate(pairs[start:stop]):
            try:
                samples[i] = decode_pair(a, b)
            except (OSError, ValueError) as err:
                broken.append((start + i, f"{name}: {err}"))
        return Chunk(samples, None, broken)

    def rows() -> Rows:
        shape = (channels + input_channels, resolution, resolution)
        return Rows(len(pairs), shape, decode)

    return DataSource(
        fingerprint,
        rows=rows,
        description=f"pairs {root}",
        metadata={
            "pairs": {
                "target_channels": channels,
                "input_resolution": input_resolution,
                "unpaired": layout == "unpaired",
            }
        },
    )


@hookimpl
def ganforge_register_datasets(register):
    register("pairs", pairs_source)
