"""The ``hf`` data source: images through the Hugging Face ``datasets`` library.

``path`` is a local image folder (class subfolders become labels), a ``.parquet`` file or a
folder of them, an ``.arrow`` file, a folder written by ``save_to_disk``, or else a hub dataset
name. ``datasets`` is imported only when a source is opened, so validating a recipe stays fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from ganforge import hookimpl
from ganforge.data import DataSource, node_once
from ganforge.errors import DataError
from ganforge.rows import Chunk, Rows

FORMAT_VERSION = "hf-v1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_DIRS = {"train", "training", "test", "testing", "eval", "validation", "valid", "val", "dev"}
# A hub id is "name" or "owner/name"; anything else that does not exist is a mistyped path.
HUB_ID = re.compile(r"^\w[\w.-]*(/\w[\w.-]*)?$")
STRINGS = ("string", "large_string")
RESIZE = ("crop", "pad", "stretch")


class _Shape(NamedTuple):
    """What every image becomes: ``resolution`` square, ``channels``, made square by ``resize``."""

    resolution: int
    channels: int
    resize: str


def hf_source(
    *,
    resolution: int,
    path: str,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    labels: bool = True,
    channels: int = 3,
    revision: str | None = None,
    max_broken_fraction: float = 0.01,
    resize: str = "crop",
) -> DataSource:
    """Images from the Hugging Face `datasets` library: a hub name or a local path.

    ``path``: a folder of images (subfolder names become class names), a ``.parquet`` file or
    a folder of them, an ``.arrow`` file, a ``save_to_disk`` folder, or a hub dataset name
    (needs internet; pin ``revision``, since the cache cannot see the hub change). ``split``
    picks a split where the data has several (a single file is one split). Columns default to
    the first ``Image`` feature (else ``image``/``img``) and the first ``ClassLabel`` (else an
    integer or string ``label``/``labels`` column); ``labels = false`` ignores labels.
    Images are converted to RGB (``channels = 3``) or grayscale (``1``) and made square at
    ``resolution`` by ``resize``: ``"crop"`` (the shorter side scaled to ``resolution``, the
    longer one center-cropped: the default), ``"pad"`` (the longer side scaled to it, the rest
    black) or ``"stretch"`` (both sides scaled, the aspect ratio lost). Smaller images are
    scaled up.
    Images that cannot be decoded (corrupt, truncated, not an image) are skipped and counted;
    more than ``max_broken_fraction`` of them stops the run, naming the first.
    """
    if channels not in (1, 3):
        raise DataError(f"hf: channels must be 1 or 3, got {channels}")
    if resize not in RESIZE:
        raise ValueError(f"resize must be one of {', '.join(map(repr, RESIZE))}, not {resize!r}")
    if not 0 <= max_broken_fraction <= 1:
        raise DataError(f"hf: max_broken_fraction must be in [0, 1], got {max_broken_fraction}")
    kind, where, digest = _locate(path)
    options = {
        "v": FORMAT_VERSION,
        "kind": kind,
        "path": where,
        "split": split,
        "image_column": image_column,
        "label_column": label_column,
        "labels": labels,
        "channels": channels,
        "resolution": resolution,
    }
    if resize != "crop":  # the default keeps the fingerprints (and stores) of earlier runs
        options["resize"] = resize
    if kind == "hub":
        options["revision"] = revision
    else:  # decoded images change whenever a file under the path does
        options["files"] = digest
    if kind == "imagefolder":  # read without datasets since 2026-12-06 (its own row order)
        options["v"] = f"{FORMAT_VERSION}-folder"

    def rows() -> Rows:
        shape = _Shape(resolution, channels, resize)
        if kind == "imagefolder":  # PIL on the files themselves: no datasets in between
            # Listed again here: the run keeps no list of a million files it no longer needs.
            paths, values, names = _folder(Path(where), split, labels)
            return _folder_rows(
                Path(where), paths, values, names, where, shape, max_broken_fraction
            )
        ds = _open(kind, where, split, revision)
        return _rows(ds, where, shape, image_column, label_column, labels, max_broken_fraction)

    return DataSource(
        fingerprint=json.dumps(options, sort_keys=True),
        description=f"hf {where} [{split}]",
        metadata={"kind": kind, "note": _hub_note(path) if kind == "hub" else ""},
        rows=rows,
    )


def _hub_note(path: str) -> str:
    return (
        f"data.path {path!r} is no local file or folder, so it is read as a Hugging Face hub "
        "dataset (downloaded at first use: needs internet)"
    )


def _scan(folder: str, parts: tuple[str, ...] = ()):
    """``(parts, stat)`` of every file under ``folder`` (symbolic links to files followed, to
    folders not) in the order their paths sort, one ``os.scandir`` pass (about 10× faster
    than ``rglob`` and ``stat`` on Path objects), holding one folder's entries at a time."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as err:
        raise DataError(f"hf: cannot read the folder {folder}: {err.strerror or err}") from None
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _scan(entry.path, (*parts, entry.name))
        elif entry.is_file():
            yield (*parts, entry.name), entry.stat()


def _digested(name: bytes, stat: os.stat_result) -> bytes:
    """A file's line in a fingerprint: its path below the data's root, size and mtime
    (content-dependent, reads no pixels)."""
    return b"%s\0%d\0%d\n" % (name, stat.st_size, stat.st_mtime_ns)


def _listing(root: Path) -> dict:
    """What ``_locate`` needs of a folder, without keeping a list of its files: the digest of
    every file's line (:func:`_digested`, in path order, computed as the walk goes), how many
    files, which kinds of files, and the first name that is not UTF-8."""
    digest, count, suffixes = hashlib.sha256(), 0, set()
    for parts, st in _scan(str(root)):
        try:
            name = "/".join(parts).encode()
        except UnicodeEncodeError:  # bytes the file system holds that are no UTF-8 name
            return {"bad_name": repr(os.fsencode(root.joinpath(*parts)))}
        digest.update(_digested(name, st))
        count += 1
        suffixes.add(os.path.splitext(parts[-1])[1])
    return {"digest": digest.hexdigest()[:16], "files": count, "suffixes": sorted(suffixes)}


def _locate(path: str) -> tuple[str, str, str | None]:
    """Classify ``path`` as (kind, absolute path or hub id, digest of its files) without
    opening it. A folder is listed once per node and launch (``ganforge.data.node_once``):
    the other processes starting with it read that listing instead of walking the folder."""
    local = Path(path).expanduser()
    if not local.exists():
        owner = Path(path).parts[0] if Path(path).parts else ""
        if "/" in str(path) and Path(owner).is_dir():  # "data/faces" with a ./data folder here
            raise DataError(
                f"hf: no such file or directory: {path} (not read as a hub name: {owner}/ is "
                "a local folder)"
            )
        if HUB_ID.match(str(path)) and local.suffix not in (".parquet", ".arrow"):
            return "hub", str(path), None
        raise DataError(f"hf: no such file or directory: {path}")
    local = local.resolve()
    if local.is_file():
        if local.suffix in (".parquet", ".arrow"):
            digest = hashlib.sha256(_digested(local.name.encode(), local.stat()))
            return local.suffix[1:], str(local), digest.hexdigest()[:16]
        raise DataError(f"hf: {local} is not a .parquet or .arrow file, nor a directory")
    listing = node_once(f"hf-listing {local}", lambda: _listing(local))
    if "bad_name" in listing:
        raise DataError(
            f"hf: the file {listing['bad_name']} under {local} has a name that is not valid "
            "UTF-8, which the datasets library cannot read: rename it (or move it out)"
        )
    digest, suffixes = listing["digest"], set(listing["suffixes"])
    if (local / "state.json").exists() or (local / "dataset_dict.json").exists():
        return "disk", str(local), digest
    if ".parquet" in suffixes:
        return "parquet_dir", str(local), digest
    if {suffix.lower() for suffix in suffixes} & IMAGE_SUFFIXES:
        return "imagefolder", str(local), digest
    raise DataError(f"hf: {local} holds no images, .parquet files or save_to_disk dataset")


def _folder(
    root: Path, split: str, labels: bool
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """The image files of ``split`` under ``root`` in path order, compactly (a million files:
    tens of MB, not a Python object each): their paths below ``root`` as one bytes array, and
    each one's class (the name of the folder it is in) as an index into the sorted class
    names, or None where some image lies outside class folders or labels are off."""
    base = Path(_image_files(root, split)[split]).parent
    top = base.relative_to(root).parts
    found, folders, folder_of = [], {}, []
    for parts, _ in _scan(str(base), top):
        # as datasets' image folders: no hidden or __special__ folders (.ipynb_checkpoints,
        # __MACOSX) and no hidden files (macOS's ._ companions)
        below = parts[len(top) :]
        if os.path.splitext(below[-1])[1].lower() not in IMAGE_SUFFIXES or any(
            part.startswith((".", "__")) for part in below
        ):
            continue
        found.append("/".join(parts).encode("utf-8", "surrogateescape"))
        folder_of.append(folders.setdefault(below[-2] if len(below) > 1 else None, len(folders)))
    if not found:
        raise DataError(f"hf: {base} holds no images")
    paths = np.array(found, dtype=bytes)
    del found
    if not labels or None in folders:
        return paths, None, None
    names = sorted(folders)
    rank = np.empty(len(folders), np.int64)
    rank[list(folders.values())] = np.searchsorted(np.array(names), np.array(list(folders)))
    return paths, rank[np.array(folder_of, np.int64)], names


def _folder_rows(root: Path, paths, values, names, where: str, shape: _Shape, max_broken) -> Rows:
    """Rows of image files decoded by PIL, labelled by their folder's name (sorted names)."""

    def files(start: int, stop: int):
        return (os.path.join(root, os.fsdecode(p)) for p in paths[start:stop])

    return _image_rows(len(paths), files, values, names, where, shape, max_broken)


def _image_rows(count, values, labels, class_names, where, shape: _Shape, max_broken) -> Rows:
    """Rows of ``count`` images: ``values(start, stop)`` gives what :func:`_to_array` decodes
    (paths, bytes), ``labels`` every row's class (or None)."""
    counted = _Counted(shape)

    def decode(start: int, stop: int) -> Chunk:
        samples, broken = counted.decode(values(start, stop), start, where)
        return Chunk(samples, None if labels is None else labels[start:stop], broken)

    side = shape.resolution
    return Rows(
        count,
        (shape.channels, side, side),
        decode,
        labelled=labels is not None,
        class_names=class_names,
        max_broken_fraction=max_broken,
        finished=lambda: counted.note(count, where),
    )


class _Counted:
    """Decodes a chunk of images, counting (across threads) those the center crop cut."""

    def __init__(self, shape: _Shape):
        self.shape, self.cropped, self.lock = shape, 0, threading.Lock()

    def decode(self, values, start: int, where: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
        values = list(values)
        side = self.shape.resolution
        samples = np.zeros((len(values), self.shape.channels, side, side), np.uint8)
        broken, crops = [], 0
        for i, value in enumerate(values):
            try:
                samples[i], square = _to_array(value, self.shape, where, start + i)
            except DataError as err:  # left out by the core, up to max_broken_fraction
                broken.append((start + i, str(err)))
                continue
            crops += not square and self.shape.resize == "crop"
        with self.lock:
            self.cropped += crops
        return samples, broken

    def note(self, total: int, where: str) -> None:
        if self.cropped:
            print(
                f"ganforge: note: hf: {self.cropped} of {total} images of {where} are not "
                "square and lose the ends of their longer side to the center crop; data.resize "
                '= "pad" or "stretch" keeps all of each image',
                file=sys.stderr,
                flush=True,
            )


def _image_files(root: Path, split: str) -> dict[str, str]:
    """One glob per split: ``data_dir``'s split inference walks the tree dozens of times."""
    if (root / split).is_dir():
        return {split: str(root / split / "**")}
    splits = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name in SPLIT_DIRS)
    if splits or split != "train":
        raise DataError(f"hf: {root} has no split {split!r}; splits: {splits or ['train']}")
    return {split: str(root / "**")}


def _open(kind: str, where: str, split: str, revision: str | None):
    """Open the dataset (no image decoding); every failure becomes a DataError."""
    import datasets

    try:
        if kind == "disk":
            ds = datasets.load_from_disk(where)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"hf: {where} has no split {split!r}; splits: {list(ds)}")
                ds = ds[split]
            return ds
        if kind == "arrow":
            return datasets.Dataset.from_file(where)
        if kind == "parquet":  # a single file is one split, whatever it is called
            return datasets.load_dataset("parquet", data_files={split: where}, split=split)
        if kind == "parquet_dir":  # data_dir infers splits from shard names (train-0000...)
            return datasets.load_dataset("parquet", data_dir=where, split=split)
        if kind == "imagefolder":
            files = _image_files(Path(where), split)
            return datasets.load_dataset("imagefolder", data_files=files, split=split)
        return datasets.load_dataset(where, split=split, revision=revision)
    except DataError:
        raise
    except Exception as err:
        hint = (
            "; offline, point `path` at a local image folder, .parquet, .arrow or save_to_disk path"
            if kind == "hub"
            else ""
        )
        raise DataError(f"hf: could not load {where!r} (split {split!r}): {err}{hint}") from err


def _pick_columns(ds, where: str, image_column, label_column, labels: bool):
    """Resolve the image column, and the label column with its feature (None: unlabelled)."""
    import datasets

    features, columns = ds.features, list(ds.column_names)
    for name in (image_column, label_column):
        if name is not None and name not in columns:
            raise DataError(f"hf: {where} has no column {name!r}; columns: {columns}")
    image = image_column or next(
        (c for c in columns if isinstance(features[c], datasets.Image)),
        next((c for c in ("image", "img") if c in columns), None),
    )
    if image is None:
        raise DataError(f"hf: {where} has no image column; columns: {columns}; set image_column")
    label = label_column or next(
        (c for c in columns if isinstance(features[c], datasets.ClassLabel)),
        next((c for c in ("label", "labels") if c in columns), None),
    )
    feature = features[label] if labels and label else None
    if isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value)
        and (feature.dtype.startswith(("int", "uint")) or feature.dtype in STRINGS)
    ):
        return image, label, feature
    if labels and label_column is not None:
        raise DataError(f"hf: column {label_column!r} holds {feature}, not class labels")
    return image, None, None


def _rows(ds, where, shape: _Shape, image_column, label_column, labels, max_broken) -> Rows:
    """The dataset as rows the core writes a chunk at a time (``ganforge.rows``): images
    decoded by PIL from their raw bytes or paths, labels read from their column up front."""
    import datasets

    if len(ds) == 0:
        raise DataError(f"hf: {where} holds no rows")
    image, label, feature = _pick_columns(ds, where, image_column, label_column, labels)
    ds = ds.select_columns([image] + ([label] if label else []))
    if isinstance(ds.features[image], datasets.Image):  # raw bytes/paths: we decode with PIL
        ds = ds.cast_column(image, datasets.Image(decode=False))
    class_names, label_values = _labels(ds, label, feature, where) if label else (None, None)
    rows = lambda start, stop: ds[start:stop][image]  # noqa: E731
    return _image_rows(len(ds), rows, label_values, class_names, where, shape, max_broken)


def _labels(ds, label: str, feature, where: str) -> tuple[list[str] | None, np.ndarray]:
    """Class names and every row's label, from the label column alone (no image is read)."""
    import datasets

    column = ds.with_format("arrow")[label]  # the whole column at once, not row by row
    class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    strings = class_names is None and feature.dtype in STRINGS
    raw = column.to_pylist() if strings else column.to_numpy()
    if not isinstance(feature, datasets.ClassLabel) and feature.dtype in STRINGS:
        # Sorted names, so the encoding does not depend on row order.
        class_names = sorted(set(raw))
        raw = np.searchsorted(np.array(class_names), np.array(raw))
    values = np.asarray(raw, dtype=np.int64)
    if values.min() < 0:
        raise DataError(
            f"hf: column {label!r} of {where} has negative labels (unlabelled rows?); "
            "set labels = false to ignore labels"
        )
    return class_names, values


def _to_array(value, shape: _Shape, where: str, row: int) -> tuple[np.ndarray, bool]:
    """One image (bytes, path, datasets dict, PIL image or array) as uint8 C×R×R, and whether
    it was square."""
    resolution, channels = shape.resolution, shape.channels
    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, os.PathLike)):
            img = Image.open(value)
        elif isinstance(value, Image.Image):
            img = value
        else:
            img = Image.fromarray(np.asarray(value, dtype=np.uint8))
        img.draft(None, (resolution, resolution))  # JPEGs decode at a reduced size, much faster
        if img.mode == "P":  # palette transparency must go through RGBA to convert cleanly
            img = img.convert("RGBA")
        img = img.convert("RGB" if channels == 3 else "L")
        square, size, lanczos = img.width == img.height, (resolution, resolution), Image.LANCZOS
        if shape.resize == "crop":  # the centered region of the target aspect ratio, resized
            img = ImageOps.fit(img, size, lanczos)
        elif shape.resize == "pad":  # all of it, resized to fit, centered on black
            img = ImageOps.pad(img, size, lanczos, color=0)
        else:
            img = img.resize(size, lanczos)
    except (OSError, ValueError, TypeError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"hf: cannot decode image {row} of {where}: {err}") from err
    array = np.asarray(img, dtype=np.uint8)
    return (array[None] if channels == 1 else array.transpose(2, 0, 1)), square


@hookimpl
def ganforge_register_datasets(register):
    register("hf", hf_source)
