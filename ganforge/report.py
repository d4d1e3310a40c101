"""A run's record in two files anyone can open: ``curves.png`` (the logged values over the
steps, drawn with PIL) and ``report.html`` (the recipe, the curves, the sample grids over
training time and the final values, one self-contained page: images inlined, no network).

Both read only what the run already wrote (``metrics.jsonl``, ``recipe.toml``,
``samples/step_*.png``), so ``ganforge report RUN_DIR`` redraws them at any time.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ganforge.errors import GanforgeError
from ganforge.runfiles import atomic_write, read_metrics, write_text

#: Each panel's size in pixels, and panels per row of ``curves.png``.
PANEL_SIZE = (320, 200)
COLUMNS = 2
#: The most sample grids the report shows (evenly spaced over training, first and last kept).
MAX_GRIDS = 12
#: Panels drawn when the log has their keys; ``eval/*`` metrics get a panel each.
PANELS = (
    ("losses", ("d_loss", "g_loss")),
    ("critic outputs (mean logits)", ("d_real", "d_fake")),
    ("gradient norms", ("grad_norm_d", "grad_norm_g")),
    ("critic accuracy", ("d_accuracy",)),
)
BACKGROUND = (255, 255, 255)
INK = (60, 60, 60)
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))
_MARGIN = (58, 30, 10, 26)  # left, top (title and legend), right, bottom (step labels)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    """The (step, value) points of ``key``, non-finite and non-numeric values left out."""
    points = []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(value) and "step" in record:
            points.append((float(record["step"]), float(value)))
    return points


def _panels(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, tuple[str, ...]]]:
    keys = {key for record in records for key in record}
    panels = [(title, tuple(k for k in names if k in keys)) for title, names in PANELS]
    evals = sorted(k for k in keys if k.startswith("eval/"))
    return [(t, names) for t, names in panels if names] + [(k, (k,)) for k in evals]


def _span(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-12:  # a flat line: centre it in a band of its own size (or 1)
        pad = max(abs(low) * 0.1, 0.5)
        return low - pad, high + pad
    return low, high


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    origin: tuple[int, int],
    title: str,
    series: Sequence[tuple[str, list[tuple[float, float]]]],
) -> None:
    """One panel: title, legend, axes, min/max value labels, step range, a line per key."""
    x0, y0 = origin
    width, height = PANEL_SIZE
    left, top = x0 + _MARGIN[0], y0 + _MARGIN[1]
    right, bottom = x0 + width - _MARGIN[2], y0 + height - _MARGIN[3]
    draw.text((x0 + 6, y0 + 3), title, fill=INK)
    legend_x = x0 + 6
    for (name, _), colour in zip(series, COLOURS, strict=False):
        draw.rectangle((legend_x, y0 + 17, legend_x + 8, y0 + 25), fill=colour)
        draw.text((legend_x + 11, y0 + 15), name, fill=INK)
        legend_x += 11 + int(draw.textlength(name)) + 12
    draw.line((left, top, left, bottom, right, bottom), fill=INK)
    points = [p for _, found in series for p in found]
    if not points:
        draw.text((left + 8, (top + bottom) // 2), "no finite values", fill=INK)
        return
    step_lo, step_hi = min(s for s, _ in points), max(s for s, _ in points)
    low, high = _span([v for _, v in points])
    draw.text((x0 + 4, top - 4), f"{high:.4g}", fill=INK)
    draw.text((x0 + 4, bottom - 8), f"{low:.4g}", fill=INK)
    draw.text((left, bottom + 4), f"step {step_lo:g}", fill=INK)
    last = f"{step_hi:g}"
    draw.text((right - draw.textlength(last), bottom + 4), last, fill=INK)

    def pixel(step: float, value: float) -> tuple[float, float]:
        across = (step - step_lo) / (step_hi - step_lo) if step_hi > step_lo else 0.5
        x = left + 2 + across * (right - left - 4)
        y = bottom - 2 - (value - low) / (high - low) * (bottom - top - 4)
        return x, y

    for (_, found), colour in zip(series, COLOURS, strict=False):
        xy = [pixel(s, v) for s, v in found]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy if len(xy) <= 50 else ():  # few points: mark each one
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)


def plot_curves(run_dir: Path) -> Path:
    """Draw ``RUN_DIR/metrics.jsonl`` as ``RUN_DIR/curves.png`` (atomically) and return its path.

    A panel for each group of logged values the run has (losses, critic outputs, gradient norms,
    critic accuracy, each ``eval/*`` metric), ``COLUMNS`` to a row, each ``PANEL_SIZE`` pixels.
    """
    run_dir = Path(run_dir)
    records = _read_run(run_dir)
    panels = _panels(records) or [("no logged values", ())]
    rows = math.ceil(len(panels) / COLUMNS)
    width, height = PANEL_SIZE
    picture = Image.new("RGB", (width * COLUMNS, height * rows), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    for i, (title, keys) in enumerate(panels):
        row, column = divmod(i, COLUMNS)
        series = [(key, _series(records, key)) for key in keys]
        _draw_panel(draw, (column * width, row * height), title, series)
    path = run_dir / "curves.png"
    return atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def _read_run(run_dir: Path) -> list[dict[str, Any]]:
    if not (run_dir / "metrics.jsonl").is_file():
        raise GanforgeError(f"{run_dir} is not a run folder: it has no metrics.jsonl")
    return read_metrics(run_dir)


def _grids(run_dir: Path) -> list[tuple[int, Path]]:
    """Up to ``MAX_GRIDS`` sample grids, (step, path), evenly spaced over the steps."""
    found = []
    for path in (run_dir / "samples").glob("step_*.png"):
        match = re.fullmatch(r"step_(\d+)\.png", path.name)
        if match:
            found.append((int(match.group(1)), path))
    found.sort()
    if len(found) <= MAX_GRIDS:
        return found
    picks = {round(i * (len(found) - 1) / (MAX_GRIDS - 1)) for i in range(MAX_GRIDS)}
    return [found[i] for i in sorted(picks)]


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(record: Mapping[str, Any] | None, caption: str) -> str:
    if not record:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(str(key))}</td><td>{_shown(value)}</td></tr>"
        for key, value in record.items()
        if key != "step"
    )
    title = f"{caption} (step {record.get('step', '?')})"
    return f"<table><caption>{html.escape(title)}</caption>{rows}</table>\n"


def _shown(value: Any) -> str:
    return html.escape(f"{value:.6g}" if isinstance(value, float) else str(value))


_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}"
    "pre{background:#f4f4f4;padding:1em;overflow-x:auto}"
    "figure{display:inline-block;margin:0 1em 1em 0;text-align:center}"
    "figure img{image-rendering:pixelated;width:192px}"
    "table{border-collapse:collapse;margin:0 2em 1em 0;display:inline-table}"
    "td{border:1px solid #ccc;padding:2px 8px}caption{text-align:left;font-weight:bold}"
)


def write_report(run_dir: Path) -> Path:
    """Write ``RUN_DIR/report.html`` (and redraw ``curves.png``) and return its path.

    One self-contained page: the resolved recipe, the curves, up to ``MAX_GRIDS`` sample grids
    captioned with their steps, and the final logged values and eval metrics. Images are
    inlined as ``data:`` URIs, so the page needs no server and no network.
    Raises :class:`~ganforge.errors.GanforgeError` for a folder without ``metrics.jsonl``.
    """
    run_dir = Path(run_dir)
    records = _read_run(run_dir)
    curves = plot_curves(run_dir)
    recipe = run_dir / "recipe.toml"
    recipe_text = "(no recipe.toml)"
    if recipe.is_file():
        recipe_text = recipe.read_bytes().decode("utf-8", errors="replace")
    logs = [r for r in records if not any(k.startswith("eval/") for k in r)]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    figures = "".join(
        f'<figure><img src="{_data_uri(path)}" alt="samples at step {step}">'
        f"<figcaption>step {step}</figcaption></figure>\n"
        for step, path in _grids(run_dir)
    )
    name = html.escape(run_dir.resolve().name)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>ganforge run {name}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>ganforge run {name}</h1>\n"
        f"<h2>Final values</h2>\n"
        f"{_table(logs[-1] if logs else None, 'last log step')}"
        f"{_table(evals[-1] if evals else None, 'last eval')}"
        f'<h2>Curves</h2>\n<img src="{_data_uri(curves)}" alt="training curves">\n'
        f"<h2>Samples over training</h2>\n{figures or '<p>no sample grids</p>'}"
        f"<h2>Recipe</h2>\n<pre>{html.escape(recipe_text)}</pre>\n</body></html>\n"
    )
    return write_text(run_dir / "report.html", page)
