"""``ganforge generate MODEL --interpolate N``: walks between latents along great circles
(spherical interpolation), written as a grid (a row per pair of ends) and an animated GIF."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ganforge.components import grid_labels
from ganforge.errors import GanforgeError
from ganforge.export import forward, latents, load_generator
from ganforge.plugins import Plugins
from ganforge.runfiles import atomic_write, image_grid, save_grid
from ganforge.sampling import _device, check_truncation, chosen_classes, native

#: Each GIF frame is shown this long (milliseconds).
FRAME_MS = 120


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` points from ``a`` to ``b`` (both included) along the great circle between them.

    ``a`` and ``b`` are batches of latents (B×...); the result is B×steps×.... The direction
    turns from ``a``'s to ``b``'s at an even angular pace while the norm moves linearly between
    theirs (constant when they are equal), as high-dimensional Gaussian latents expect: a
    straight line between two such latents passes through improbably short ones. Nearly
    parallel ends fall back to a straight line.
    """
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    norm_a, norm_b = flat_a.norm(dim=1, keepdim=True), flat_b.norm(dim=1, keepdim=True)
    unit_a, unit_b = flat_a / norm_a.clamp_min(1e-12), flat_b / norm_b.clamp_min(1e-12)
    omega = torch.arccos((unit_a * unit_b).sum(1, keepdim=True).clamp(-1, 1))  # B×1
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w_a = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / safe)  # B×steps
    w_b = torch.where(parallel, t.expand_as(w_a), torch.sin(t * omega) / safe)
    direction = w_a[:, :, None] * unit_a[:, None] + w_b[:, :, None] * unit_b[:, None]
    direction = direction / direction.norm(dim=2, keepdim=True).clamp_min(1e-12)
    norm = (1 - t) * norm_a + t * norm_b  # B×steps
    path = direction * norm[:, :, None]
    path[:, 0], path[:, -1] = flat_a, flat_b  # the ends exactly, not up to rounding
    return path.to(a.dtype).reshape(a.shape[0], steps, *a.shape[1:])


def write_interpolation(
    model: str | Path,
    *,
    steps: int,
    out: str | Path,
    rows: int | None = None,
    seed: int = 0,
    truncation: float | None = None,
    label: str | None = None,
    device: str = "cpu",
    plugins: Plugins | None = None,
    full: bool = False,
) -> list[Path]:
    """Interpolate ``rows`` pairs of latents in ``steps`` steps each; return the files written.

    ``out`` ending in ``.png`` writes the grid (a row per pair, ``steps`` columns) and the GIF
    beside it (same name, ``.gif``); ending in ``.gif`` writes only the GIF, whose frame ``k``
    shows every row at step ``k``. Conditional models keep one class per row: every class in
    turn unless ``label`` names some. ``rows`` defaults to the number of those classes, or 4.
    Images come at the data's own size where training padded it, as ``ganforge generate``'s;
    ``full`` keeps the whole output.
    """
    if steps < 2:
        raise GanforgeError(f"--interpolate needs at least 2 steps (the two ends), not {steps}")
    if rows is not None and rows < 1:
        raise GanforgeError(f"--num (rows of the interpolation) must be at least 1, not {rows}")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".gif"):
        raise GanforgeError(f"--out {out}: an interpolation is written as a .png or a .gif")
    generator, info = load_generator(model, _device(device), plugins and plugins.registry)
    if info.output != "image":
        raise GanforgeError("--interpolate draws images; this generator makes points")
    check_truncation(truncation, info)
    classes = chosen_classes(label, info)
    if classes is None and info.num_classes:
        classes = torch.arange(info.num_classes)
    rows = rows or (len(classes) if classes is not None else 4)
    ends = latents(info, 2 * rows, seed)
    z = slerp(ends[0::2], ends[1::2], steps).flatten(0, 1)  # row-major: rows×steps
    y = None
    if classes is not None:
        y = classes[grid_labels(rows, len(classes))].repeat_interleave(steps)
    with torch.no_grad():
        images = forward(generator, z, y, truncation).cpu()
    images = images if full else native(images, info)
    written = []
    if out.suffix.lower() == ".png":
        written.append(save_grid(out, images, nrow=steps))
    frames = images.reshape(rows, steps, *images.shape[1:]).transpose(0, 1)
    written.append(save_gif(out.with_suffix(".gif"), frames))
    return written


def save_gif(path: Path, frames: torch.Tensor, frame_ms: int = FRAME_MS) -> Path:
    """An endlessly looping GIF of F×B×C×H×W images in [-1, 1]: frame ``k`` is a grid of
    ``frames[k]``, atomically."""
    pictures = []
    for batch in frames:
        array = image_grid(batch)
        pictures.append(Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array))

    def write(tmp: Path) -> None:
        # Disposal 2: Pillow keeps a frame equal to the one before (it would merge them).
        pictures[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=frame_ms,
            loop=0,
            disposal=2,
            optimize=False,
        )

    return atomic_write(path, write)
