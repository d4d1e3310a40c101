"""Files a run writes: atomically (temporary file, then rename), on the main process only."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def default_mode(folder: bool = False) -> int:
    """The permissions ``open``/``mkdir`` would give under the process umask (temporary files
    are created owner-only; what a run keeps should not be)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def as_os_error(err: Exception) -> OSError | None:
    """``err`` as the OSError it stands for: safetensors reports a full disk as its own
    ``SafetensorError`` ("... I/O error: No space left on device (os error 28)"). None for
    anything that is not an I/O failure."""
    if isinstance(err, OSError):
        return err
    found = re.search(r"I/O error: (.*) \(os error (\d+)\)", str(err))
    if type(err).__name__ != "SafetensorError" or found is None:
        return None
    return OSError(int(found.group(2)), found.group(1))


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    A crash or a full disk leaves the previous file (or none), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        failed = as_os_error(err) if isinstance(err, Exception) else None
        if failed is not None and failed is not err:
            raise OSError(failed.errno, f"{failed.strerror}: {path}") from None
        raise
    return path


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cpu_tensors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared storage: tied weights, views)."""
    return {f"{prefix}{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def read_log(path: Path) -> list[dict]:
    """The records of a run's JSON-lines log (``metrics.jsonl``), each a dict with an integer
    ``step``.

    A torn last line (a write cut short by a kill) is skipped with a warning. Any other damage
    (bytes that are not UTF-8, a line that is not a JSON object, a step that is not a whole
    number) is one :class:`~ganforge.errors.GanforgeError` naming the line: nothing is guessed.
    """
    from ganforge.errors import GanforgeError

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise GanforgeError(f"cannot read {path}: {err.strerror or err}") from None
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            good = isinstance(record, dict) and type(record.get("step")) is int
        except (UnicodeDecodeError, json.JSONDecodeError):
            record, good = None, False
        if good:
            records.append(record)
        elif number == len(lines) and record is None:  # torn: not even JSON
            print(
                f"ganforge: warning: {path}: the last line is cut short (a run stopped while "
                "writing it); it is skipped",
                file=sys.stderr,
            )
        else:
            raise GanforgeError(
                f"{path} is damaged at line {number}: expected a JSON object with an integer "
                '"step"; repair or remove that line'
            )
    return records


def cut_jsonl(path: Path, step: int) -> None:
    """Keep the records of a JSON-lines log up to ``step``, dropping a torn last line.

    A resumed run continues the log from its checkpoint, so no step appears twice. A log
    damaged elsewhere stops the run (:func:`read_log`) before anything is cut.
    """
    if not path.exists():
        return
    kept = [json.dumps(r) + "\n" for r in read_log(path) if r["step"] <= step]
    write_text(path, "".join(kept))


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl``."""
    return read_log(Path(run_dir) / "metrics.jsonl")


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile B×C×H×W images in [-1, 1] into one H'×W'×C uint8 array (C is 1 or 3)."""
    images = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    b, c, h, w = images.shape
    if c not in (1, 3):  # e.g. RGBA: show the colour channels
        images, c = images[:, :3], min(c, 3)
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return grid.permute(1, 2, 0).numpy()


def save_grid(path: Path, images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> Path:
    """Save a grid of images in [-1, 1] as a PNG, atomically."""
    array = image_grid(images, nrow, pad)
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_scatter(
    path: Path, points: torch.Tensor, reference: torch.Tensor, size: int = 384
) -> Path:
    """Plot 2-D samples (dark) over reference data (light) as a PNG, atomically.

    Only the first two dimensions are drawn; the view is fitted to the reference data.
    """
    from PIL import ImageDraw

    pts, ref = points.detach().float().cpu()[:, :2], reference.float().cpu()[:, :2]
    low, high = ref.min(0).values, ref.max(0).values
    centre, half = (low + high) / 2, (high - low).max().item() * 0.6 + 1e-6
    picture = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(picture)

    def pixel(p):
        xy = ((p - centre) / half * 0.5 + 0.5) * (size - 1)
        return float(xy[0]), float(size - 1 - xy[1])

    for p, colour, r in [(q, (190, 200, 230), 1) for q in ref] + [
        (q, (200, 40, 40), 1) for q in pts
    ]:
        x, y = pixel(p)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
