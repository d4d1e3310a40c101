"""Decoding a data set in pieces: the incremental contract a data source may offer, and the
writer that fills a store from it with bounded memory, on every core, visibly and resumably.

A source that knows its size and sample shape before decoding (a folder listing, a table's
row count) gives :class:`Rows`; the writer decodes ``chunk`` rows at a time in a thread pool
(image decoders release the GIL), writes each chunk straight into the store's memory-mapped
arrays, and records which chunks are done, so a preparation killed half-way continues where
it stopped. At most two chunks per core are in flight, whatever the data set's size.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ganforge.errors import DataError


class Chunk(NamedTuple):
    """Rows ``[start, stop)`` decoded: samples (rows that failed are left as zeros), labels
    or None, and the rows that could not be decoded, with why."""

    samples: np.ndarray
    labels: np.ndarray | None
    broken: list[tuple[int, str]]


@dataclass(frozen=True)
class Rows:
    """A data set a source decodes in pieces (``DataSource.rows``).

    ``count`` samples of ``shape`` (C×R×R for images), ``labelled`` or not, decoded by
    ``decode(start, stop) -> Chunk``, which may be called from several threads at once.
    Rows that cannot be decoded are left out of the store, up to ``max_broken_fraction`` of
    them; more stops the preparation naming the first. ``finished()``, when given, runs once
    after the last chunk (a source's own summary).
    """

    count: int
    shape: tuple[int, ...]
    decode: Callable[[int, int], Chunk]
    labelled: bool = False
    class_names: list[str] | None = None
    dtype: str = "uint8"
    max_broken_fraction: float = 0.0
    finished: Callable[[], None] | None = None


#: Rows per chunk: a few chunks in flight stay small (64 MiB at 256×256 RGB).
CHUNK = 256
PROGRESS = "progress.json"


def write_rows(folder: Path, rows: Rows, key: str, what: str) -> tuple[int, list[str]]:
    """Fill ``folder`` (``images.npy``, ``labels.npy``) from ``rows``, continuing what an
    earlier, interrupted call for the same ``key`` wrote there. Returns the number of rows
    kept and why the first left-out row was left out (or [])."""
    if rows.count < 1:
        raise DataError(f"{what}: the data source holds no images")
    folder.mkdir(parents=True, exist_ok=True)
    starts = range(0, rows.count, CHUNK)
    done, broken = _progress(folder, rows, key)
    mode = "r+" if done else "w+"
    images = np.lib.format.open_memmap(
        folder / "images.npy", mode, np.dtype(rows.dtype), (rows.count, *rows.shape)
    )
    labels = None
    if rows.labelled:
        labels = np.lib.format.open_memmap(folder / "labels.npy", mode, np.int64, (rows.count,))
    todo = [s for s in starts if s not in done]
    if done:
        print(
            f"ganforge: {what}: continuing an interrupted preparation "
            f"({min(len(done) * CHUNK, rows.count):,} of {rows.count:,} rows done)",
            file=sys.stderr,
            flush=True,
        )
    _decode_all(rows, todo, images, labels, done, broken, folder, key, what)
    if rows.finished is not None:
        rows.finished()
    return _keep(folder, rows, images, labels, broken, what)


def _progress(folder: Path, rows: Rows, key: str) -> tuple[set[int], dict[int, str]]:
    """The chunks an earlier call wrote (and their broken rows), when it prepared the same
    data; else nothing."""
    try:
        saved = json.loads((folder / PROGRESS).read_text())
        same = (saved["key"], saved["count"], saved["chunk"]) == (key, rows.count, CHUNK)
        # The arrays as this preparation would make them (a kill while broken rows were left
        # out leaves them shorter: then it starts again).
        shapes = [("images", (rows.count, *rows.shape))]
        shapes += [("labels", (rows.count,))] if rows.labelled else []
        for name, shape in shapes:
            same = same and np.load(folder / f"{name}.npy", mmap_mode="r").shape == shape
        if same:
            return set(saved["done"]), {int(k): v for k, v in saved["broken"].items()}
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        pass
    return set(), {}


def _decode_all(rows, todo, images, labels, done, broken, folder, key, what) -> None:
    """Decode the chunks ``todo`` on every core, writing each into the arrays and recording
    it as done (after its rows are flushed to the file)."""
    from tqdm.auto import tqdm

    shown = {"unit": "img", "desc": f"ganforge: preparing {what}", "mininterval": 2.0}
    initial = min(len(done) * CHUNK, rows.count)
    workers = max(1, min(16, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(workers)
    try:
        with tqdm(total=rows.count, initial=initial, file=sys.stderr, **shown) as bar:
            pending = set()
            for start in todo:  # a few chunks in flight: memory stays bounded
                pending.add(pool.submit(_one, rows, start, images, labels, what))
                if len(pending) < 2 * workers:
                    continue
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                _record(finished, (images, labels), done, broken, folder, key, rows, bar)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                _record(finished, (images, labels), done, broken, folder, key, rows, bar)
    finally:  # on Ctrl-C or a failure, chunks not started are not decoded
        pool.shutdown(wait=True, cancel_futures=True)


def _one(rows: Rows, start: int, images, labels, what: str) -> tuple[int, int, list]:
    stop = min(start + CHUNK, rows.count)
    try:
        chunk = rows.decode(start, stop)
    except OSError as err:  # the source's storage, not the cache: one message naming it
        raise DataError(f"{what}: cannot read rows {start}-{stop - 1}: {err}") from None
    images[start:stop] = chunk.samples
    if labels is not None:
        labels[start:stop] = chunk.labels
    return start, stop, chunk.broken


def _record(finished, arrays, done, broken, folder, key, rows, bar) -> None:
    for array in arrays:  # the chunks' rows are on disk before they are recorded as done
        if array is not None:
            array.flush()
    failed = None
    for future in finished:
        if future.exception() is not None:  # a decoder's failure stops the preparation,
            failed = failed or future.exception()  # once the chunks done beside it are kept
            continue
        start, stop, chunk_broken = future.result()
        done.add(start)
        broken.update(dict(chunk_broken))
        bar.update(stop - start)
    state = {"key": key, "count": rows.count, "chunk": CHUNK, "done": sorted(done)}
    state["broken"] = broken
    tmp = folder / f"{PROGRESS}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / PROGRESS)
    if failed is not None:
        raise failed


def _keep(folder: Path, rows: Rows, images, labels, broken: dict[int, str], what: str):
    """Leave the rows that could not be decoded out (or refuse when too many could not)."""
    if not broken:
        (folder / PROGRESS).unlink(missing_ok=True)
        return rows.count, []
    first = broken[min(broken)]
    if len(broken) > rows.max_broken_fraction * rows.count:
        raise DataError(
            f"{what}: {len(broken)} of {rows.count} images cannot be decoded, more than "
            f"max_broken_fraction = {rows.max_broken_fraction} allows "
            f"(data.max_broken_fraction); first: {first}"
        )
    print(
        f"ganforge: warning: {what}: skipped {len(broken)} of {rows.count} images that cannot "
        f"be decoded; first: {first}",
        file=sys.stderr,
        flush=True,
    )
    keep = np.ones(rows.count, bool)
    keep[list(broken)] = False
    kept = int(keep.sum())
    for name, array in (("images", images), ("labels", labels)):
        if array is None:
            continue
        out = np.lib.format.open_memmap(
            folder / f"{name}.kept.npy", "w+", array.dtype, (kept, *array.shape[1:])
        )
        row = 0
        for start in range(0, rows.count, CHUNK):  # chunk by chunk: memory stays bounded
            part = array[start : start + CHUNK][keep[start : start + CHUNK]]
            out[row : row + len(part)] = part
            row += len(part)
        out.flush()
        del out
        os.replace(folder / f"{name}.kept.npy", folder / f"{name}.npy")
    (folder / PROGRESS).unlink(missing_ok=True)
    return kept, [first]
