"""The data contract: plugins describe images, the core caches, samples and converts them.

A data plugin's factory returns a :class:`DataSource`: a fingerprint (source + options +
resolution) and a ``load()`` that decodes everything once into an :class:`ImageData` (uint8
N×C×H×W at the training resolution, optional integer labels and class names). The core keeps
the decoded store on disk keyed by the fingerprint, so the next run skips decoding, and owns
sampling (:class:`ShardedSampler`) and the uint8 → [-1, 1] float conversion on the device.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ganforge.errors import DataError
from ganforge.rows import Rows, write_rows


@dataclass(frozen=True)
class ImageData:
    """Decoded samples and optional integer labels (N) and class names.

    ``images`` is uint8 N×C×H×W for images (array or memory map), or float32 N×D for point
    data such as the toy 2-D sets, which the core passes through unscaled.

    Paired data (a data source whose metadata has ``pairs``, e.g. the ``pairs`` folders) stores
    each sample's target and the generator's stored input as one image: the first
    ``target_channels`` channels the target, the rest the input (at the target's size). Then
    ``channels`` is the target's: what G makes and D sees; :meth:`targets` is the targets
    alone (what evaluation compares with), and the training step splits each batch.
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: Sequence[str] | None = None
    target_channels: int = 0  # paired data: the target's channels (0: not paired)

    @property
    def paired(self) -> bool:
        return self.target_channels > 0

    @property
    def stored_channels(self) -> int:
        """The stored input's channels (paired data), else 0."""
        return int(self.images.shape[1]) - self.target_channels if self.paired else 0

    def targets(self) -> ImageData:
        """The targets alone (a view, no copy): this data when it is not paired."""
        if not self.paired:
            return self
        return replace(self, images=self.images[:, : self.target_channels], target_channels=0)

    @property
    def num_classes(self) -> int:
        """Number of classes, or 0 when the data has no labels."""
        if self.labels is None:
            return 0
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    @property
    def is_image(self) -> bool:
        return self.images.ndim == 4

    @property
    def channels(self) -> int:
        """Image channels (paired data: the target's), or the dimension of point data."""
        return self.target_channels or int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        """Image side length; 0 for point data."""
        return int(self.images.shape[2]) if self.is_image else 0

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class DataSource:
    """What a data plugin returns: how to decode its images, and a fingerprint naming them.

    ``fingerprint`` must change whenever the decoded images would (source, options,
    resolution). ``metadata["native_crop"] = [top, left, height, width]`` says where the
    data's own images lie in the training resolution, when a source pads them (28×28 digits
    trained at 32): exports keep it, and ``ganforge generate`` writes images at that size.
    ``cache=False`` skips the on-disk store for sources that are cheaper to rebuild than to
    read (procedural data). ``reference``, where a data set has a held-out
    split, gives the source evaluation compares generated samples with (its test images);
    None: the training data itself, split in two.
    """

    fingerprint: str
    load: Callable[[], ImageData] | None = None
    description: str = ""
    cache: bool = True
    metadata: dict = field(default_factory=dict)
    reference: Callable[[], DataSource] | None = None
    #: The incremental contract (``ganforge.rows``): a source that knows its size and sample
    #: shape before decoding gives ``rows()``, and the store is written a chunk at a time, on
    #: every core, resumably, in bounded memory. ``load`` then defaults to every row in memory.
    rows: Callable[[], Rows] | None = None

    def __post_init__(self):
        if self.load is None and self.rows is None:
            raise TypeError("a DataSource needs load or rows")
        if self.load is None:
            what = self.description or self.fingerprint
            object.__setattr__(self, "load", lambda: load_rows(self.rows(), what))

    def scored_against(self) -> DataSource:
        """The source generated samples are scored against: the held-out split where there
        is one, else this source itself."""
        return self.reference() if self.reference is not None else self


def target_channels(source: DataSource) -> int:
    """The target's channels of a paired source's stored images (``metadata["pairs"]``), else
    0."""
    return int(source.metadata.get("pairs", {}).get("target_channels", 0))


def cache_root() -> Path:
    """Where decoded stores live: ``$GANFORGE_CACHE_DIR`` or ``~/.cache/ganforge``."""
    env = os.environ.get("GANFORGE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ganforge"


def check_image_data(data: ImageData, resolution: int, where: str) -> None:
    """Raise DataError unless ``data`` keeps the ImageData contract at ``resolution``."""
    images = data.images
    if images.ndim == 2:
        if images.dtype != np.float32 or not np.isfinite(images).all():
            raise DataError(f"{where}: point data must be finite float32 N×D, got {images.dtype}")
        if resolution:
            raise DataError(f"{where}: point data has no resolution; remove data.resolution")
    elif images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f"{where}: images must be uint8 N×C×H×W, got {images.dtype} {images.shape}")
    elif not resolution:
        raise DataError(f"{where}: image data needs data.resolution")
    elif images.shape[2:] != (resolution, resolution):
        raise DataError(
            f"{where}: images are {images.shape[2:]}, expected {resolution}×{resolution}"
        )
    elif images.shape[1] not in (1, 3, 4) and not (
        data.paired and 0 < data.stored_channels <= 4 and data.target_channels in (1, 3, 4)
    ):
        raise DataError(f"{where}: expected 1, 3 or 4 channels, got {images.shape[1]}")
    if len(images) == 0:
        raise DataError(f"{where}: the data source holds no images")
    if data.labels is not None:
        labels = data.labels
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{where}: labels must be N integers, got {labels.dtype} {labels.shape}"
            )
        classes = len(data.class_names) if data.class_names else MAX_CLASSES
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise DataError(f"{where}: labels out of range for {data.num_classes} classes")


#: More class names than this is a damaged store (an export refuses more classes, too).
MAX_CLASSES = 100_000


def open_store(source: DataSource, resolution: int, cache_dir: Path | None = None) -> ImageData:
    """Decode ``source`` once and keep it on disk; later calls memory-map the stored arrays.

    A store is trusted only after it is checked: its ``meta.json`` names this source's
    fingerprint, and its arrays keep the data contract at ``resolution`` (dtype, shape,
    channels, labels in range). A damaged store is rebuilt with a warning. Processes opening
    one store at once (every process of a launch) take turns on a lock beside it, so one of
    them decodes and the others read what it wrote; none removes another's fresh store.
    """
    where = source.description or source.fingerprint
    paired = target_channels(source)
    if not source.cache:
        data = replace(source.load(), target_channels=paired)
        check_image_data(data, resolution, where)
        return data
    store = store_folder(source, cache_dir)
    with _store_lock(store):
        data = _checked_store(store, source.fingerprint, resolution, where, paired)
        if data is not None:
            return data
        if source.rows is not None:  # a chunk at a time, in bounded memory
            _prepare_rows(store, source, resolution, where, paired)
        else:
            data = replace(source.load(), target_channels=paired)
            check_image_data(data, resolution, where)
            _write_store(store, data, source.fingerprint)
    return _read_store(store, target_channels=paired)


def _prepare_rows(
    store: Path, source: DataSource, resolution: int, where: str, paired: int = 0
) -> None:
    """Write ``source``'s rows into ``<store>.partial`` (continuing one an interrupted
    preparation left), check it, and publish it as the store."""
    partial = store.with_name(f"{store.name}.partial")
    rows = source.rows()
    try:
        write_rows(partial, rows, source.fingerprint, where)
        meta = {"fingerprint": source.fingerprint, "class_names": rows.class_names or None}
        (partial / "meta.json").write_text(json.dumps(meta))
        check_image_data(_read_store(partial, target_channels=paired), resolution, where)
        os.replace(partial, store)
    except OSError as err:  # the source's read errors are DataErrors (ganforge.rows)
        raise _cache_error(store, err) from None
    except DataError:  # final (too many broken rows, bad labels): the next try decodes anew
        shutil.rmtree(partial, ignore_errors=True)
        raise


def load_rows(rows: Rows, what: str) -> ImageData:
    """Every row of ``rows`` decoded into memory, under the store's rules (rows that cannot be
    decoded left out, up to the source's limit)."""
    with tempfile.TemporaryDirectory(prefix="ganforge-rows-") as tmp:
        write_rows(Path(tmp), rows, "in memory", what)
        images = np.array(np.load(Path(tmp) / "images.npy", allow_pickle=False))
        labels = None
        if rows.labelled:
            labels = np.array(np.load(Path(tmp) / "labels.npy", allow_pickle=False))
    return ImageData(images, labels, rows.class_names)


def store_folder(source: DataSource, cache_dir: Path | None = None) -> Path:
    """Where ``source``'s decoded store lives in the data cache (whether or not it exists)."""
    key = hashlib.sha256(source.fingerprint.encode()).hexdigest()[:24]
    return (cache_dir or cache_root()) / "data" / key


def describe_store(source: DataSource, resolution: int) -> dict:
    """What the data cache holds for ``source``, without decoding anything: where, whether it
    is prepared (and sound), how many samples of what shape, how many bytes on disk."""
    store = store_folder(source)
    found = {"source": source.description or source.fingerprint, "store": str(store)}
    found["fingerprint"] = source.fingerprint
    if not source.cache:
        return {**found, "store": None, "prepared": "not cached (decoded at every start)"}
    data = None
    if (store / "meta.json").exists():
        try:
            data = _read_store(store, source.fingerprint, target_channels(source))
            check_image_data(data, resolution, found["source"])
        except (*_DAMAGE, OSError) as err:
            return {**found, "prepared": f"damaged ({err}): the next start rebuilds it"}
    if data is None:
        return {**found, "prepared": "no"}
    size = sum(f.stat().st_size for f in store.iterdir() if f.is_file())
    shape = "×".join(str(d) for d in data.images.shape[1:])
    return {
        **found,
        "prepared": "yes",
        "samples": f"{len(data):,} of {shape} {data.images.dtype}",
        "classes": data.num_classes,
        "bytes": size,
    }


#: How long a result :func:`node_once` shared stays usable by processes started before it.
NODE_ONCE_FRESH = 120.0


def node_once(key: str, compute: Callable[[], dict]) -> dict:
    """``compute()`` (a JSON-able dict) once for the processes of a launch on this node.

    Every process of a launch builds the data source at once; for a result that is costly to
    reach and the same for all of them (the listing of a million-file folder: seconds of
    ``stat`` calls each), the first process computes it under a lock in the data cache and
    the others read what it wrote. A result is reused only by another process on the same
    host that started before it was written, within :data:`NODE_ONCE_FRESH` seconds: the next
    run, even a minute later, and the process that wrote it compute it afresh (so files
    rewritten in between are seen). Where the cache cannot hold it, each process computes
    its own.
    """
    name = hashlib.sha256(f"{socket.gethostname()}\0{key}".encode()).hexdigest()[:24]
    path = cache_root() / "data" / "shared" / f"{name}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return compute()
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)  # without locks, processes may compute it twice
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            shared = json.loads(path.read_text())
            written = float(shared["time"])  # this host's clock (the host is in the key)
            fresh = _process_started() <= written and time.time() - written < NODE_ONCE_FRESH
            if fresh and shared["key"] == key and shared["pid"] != os.getpid():
                return shared["result"]
        result = compute()
        with contextlib.suppress(OSError):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            shared = {"key": key, "pid": os.getpid(), "time": time.time(), "result": result}
            tmp.write_text(json.dumps(shared))
            os.replace(tmp, path)
        return result
    finally:
        os.close(fd)


def _process_started() -> float:
    """When this process started (Unix time, from ``/proc``), or now where that is unknown
    (so nothing written before it counts as this launch's)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        # btime is whole seconds: a second's margin, never a result from before the start.
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") + 1.0
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _checked_store(
    store: Path, fingerprint: str, resolution: int, where: str, paired: int = 0
) -> ImageData | None:
    """The store at ``store`` if it is there and sound, else None (a damaged one is moved
    aside and removed, with a warning)."""
    if not store.exists():
        return None
    try:
        data = _read_store(store, fingerprint, paired)
        check_image_data(data, resolution, where)
        return data
    except _DAMAGE as err:
        return _set_aside(store, err)
    except OSError as err:  # memory, descriptors, permissions: the store may well be sound
        raise DataError(
            f"cannot read the data cache {store} ({err.strerror or err}); it is left as it is"
        ) from None


def _set_aside(store: Path, err: Exception) -> None:
    """Move a damaged store aside and remove it, with a warning (it is rebuilt)."""
    print(f"ganforge: warning: rebuilding the damaged data cache {store}: {err}", flush=True)
    try:
        aside = Path(tempfile.mkdtemp(prefix=f"{store.name}.damaged.", dir=store.parent))
        os.replace(store, aside)
    except OSError as moved:
        raise _cache_error(store, moved) from None
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``.<store>.lock`` beside the store, for the block. Where the
    cache cannot hold a lock file (a read-only cache prepared elsewhere), a sound store is
    still read; only writing one fails, with one message."""
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(store.with_name(f".{store.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if (store / "meta.json").exists():  # read only: nobody writes here
            yield
            return
        raise _cache_error(store, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process decoding the same data: wait
        except OSError as err:  # a file system without locks (Lustre without -o flock, ...)
            print(
                f"ganforge: warning: the data cache {store.parent} cannot be locked "
                f"({err.strerror or err}): processes starting together may each decode the "
                "data; prepare it first with `ganforge data prepare`",
                file=sys.stderr,
                flush=True,
            )
        yield
    finally:
        os.close(fd)


def _cache_error(store: Path, err: OSError) -> DataError:
    return DataError(
        f"cannot write the data cache {store.parent} ({err.strerror or err}): decoded data "
        "sets are kept there; set GANFORGE_CACHE_DIR to a writable folder (default "
        "~/.cache/ganforge)"
    )


def _write_store(store: Path, data: ImageData, fingerprint: str) -> None:
    # Written into a temporary sibling and renamed, so a crash never leaves half a store.
    try:
        tmp = Path(tempfile.mkdtemp(prefix=store.name + ".", dir=store.parent))
    except OSError as err:
        raise _cache_error(store, err) from None
    try:
        np.save(tmp / "images.npy", np.ascontiguousarray(data.images))
        if data.labels is not None:
            np.save(tmp / "labels.npy", data.labels.astype(np.int64))
        meta = {"fingerprint": fingerprint, "class_names": list(data.class_names or []) or None}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, store)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _cache_error(store, err) from None


#: What reading a damaged store raises (it is rebuilt, never trusted); other OSErrors (memory,
#: descriptors, permissions) say nothing about the store.
_DAMAGE = (
    FileNotFoundError,
    IsADirectoryError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    DataError,
)


def _read_store(store: Path, fingerprint: str | None = None, target_channels: int = 0) -> ImageData:
    """The store's arrays (memory-mapped), after its ``meta.json``: the ``fingerprint`` it
    must name, when given, and its class names; ``target_channels``: paired data's."""
    meta = json.loads((store / "meta.json").read_text())
    if fingerprint is not None and meta["fingerprint"] != fingerprint:
        raise ValueError(f"it holds {meta['fingerprint']!r}, not {fingerprint!r}")
    names = meta["class_names"]
    if names is not None and not (
        isinstance(names, list)
        and len(names) <= MAX_CLASSES
        and all(isinstance(n, str) for n in names)
    ):
        raise ValueError(f"meta.json's class_names is not a list of at most {MAX_CLASSES} names")
    # Copy-on-write: writable for torch.from_numpy, never written; its pages stay the file's,
    # shared through the page cache by every process on the node (not private memory).
    images = np.load(store / "images.npy", mmap_mode="c", allow_pickle=False)
    labels_path = store / "labels.npy"
    labels = np.load(labels_path, allow_pickle=False) if labels_path.exists() else None
    return ImageData(
        images=images, labels=labels, class_names=names, target_channels=target_channels
    )


class ShardedSampler:
    """Seeded sampling of global batches, each process taking its shard.

    The whole state is ``(epoch, offset)``: epoch ``e`` visits a permutation drawn from
    ``seed + e``, and a batch that runs past the end of an epoch continues into the next, so
    every image is seen once per epoch whatever the batch size.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not divide by {world_size} processes")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.offset = 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.size, generator=gen), epoch
        return self._perm

    def next_indices(self) -> torch.Tensor:
        """This process's indices of the next global batch."""
        end = self.offset + self.batch_size
        if end < self.size and self.world_size == 1:  # the common case, in one slice
            batch, self.offset = self._permutation(self.epoch)[self.offset : end], end
            return batch
        parts, need = [], self.batch_size
        while need:
            take = min(need, self.size - self.offset)
            parts.append(self._permutation(self.epoch)[self.offset : self.offset + take])
            self.offset += take
            need -= take
            if self.offset == self.size:
                self.epoch, self.offset = self.epoch + 1, 0
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        return batch[self.rank :: self.world_size] if self.world_size > 1 else batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


def _in_place(array: np.ndarray) -> np.ndarray:
    """``array`` itself where torch can wrap it (C-contiguous and writable: memory maps of a
    store are), else a copy."""
    if array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.array(array, copy=True, order="C")


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """Samples as the models see them: uint8 images as floats in [-1, 1], points as floats."""
    return x.float().div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x.float()


class _RowAdvice:
    """Reads a memory-mapped store's rows from the disk in parallel when they are not in the
    page cache.

    A gather that faults pages in reads them one at a time: 166 images/s from a 12 GB store of
    64×64 images on this machine's disk, against 16,567 images/s when the batch's rows are
    first named to the kernel (``madvise(MADV_WILLNEED)``: it reads them all at once).
    Naming them costs about a microsecond a row, as much as the gather itself from the page
    cache, so it is done only while gathers are slow (under :data:`FAST` bytes/s) and stops
    after :data:`SETTLED` fast batches in a row (the store is in the page cache by then).
    """

    FAST = 1 << 30
    SETTLED = 20

    def __init__(self, images: np.memmap):
        self.map = images._mmap
        # Where row 0 lies in the map (which starts at the file's offset rounded down to a
        # page, and may be a slice of a larger one): from the addresses, not ``.offset``.
        self.offset = images.ctypes.data - np.frombuffer(self.map, np.uint8).ctypes.data
        self.row = int(images[0].nbytes)
        self.on, self.fast = False, 0

    @classmethod
    def of(cls, images: np.ndarray) -> _RowAdvice | None:
        """Advice for ``images`` where they are a C-contiguous memory map, else None."""
        mapped = isinstance(images, np.memmap) and getattr(images, "_mmap", None) is not None
        return cls(images) if mapped and images.flags.c_contiguous and len(images) else None

    def before(self, idx: torch.Tensor) -> float:
        """Name ``idx``'s rows to the kernel (while gathers are slow); the time a gather
        starts."""
        if self.on:
            page = mmap.PAGESIZE
            for i in idx.tolist():
                start = self.offset + i * self.row
                aligned = start - start % page
                self.map.madvise(mmap.MADV_WILLNEED, aligned, start + self.row - aligned)
        return time.perf_counter()

    def after(self, started: float, rows: int) -> None:
        """Whether the next gathers name their rows first, from how fast this one was."""
        seconds = time.perf_counter() - started
        fast = rows * self.row >= self.FAST * seconds
        if not fast:
            self.on, self.fast = True, 0
        elif self.on:
            self.fast += 1
            self.on = self.fast < self.SETTLED


class BatchSource:
    """Gathers uint8 batches (and labels) from a store; conversion happens on the device."""

    def __init__(
        self,
        data: ImageData,
        sampler: ShardedSampler,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        xflip: bool = False,
    ):
        # One uint8 tensor over the store itself, no copy: a memory-mapped store stays mapped,
        # so N processes on a node share its pages instead of holding N private copies. A
        # gather is one index_select (~1M images/s at 64×64 from the page cache).
        self.images = torch.from_numpy(_in_place(data.images))
        self.labels = None if data.labels is None else torch.from_numpy(np.array(data.labels))
        self.sampler, self.device = sampler, torch.device(device)
        # data.xflip: the sampler draws from 2N samples, the last N the mirrored copies.
        self.xflip, self.size = xflip, len(data)
        self.memory_format = memory_format if self.images.dim() == 4 else torch.contiguous_format
        # On a GPU the gather lands in pinned staging buffers, so that the copy to the device
        # is asynchronous. Two alternate; an event per buffer keeps the host from overwriting
        # one whose copy the device has not yet done (the host may run ahead of the device).
        self._staging: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        self._turn = 0
        self._advice = _RowAdvice.of(data.images)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return self._select(idx).to(self.device)
        if not self._staging or self._staging[0][0].shape[0] != len(idx):
            shape = (len(idx), *self.images.shape[1:])
            self._staging = [
                (torch.empty(shape, dtype=self.images.dtype).pin_memory(), None) for _ in range(2)
            ]
        buffer, copied = self._staging[self._turn]
        if copied is not None:
            copied.synchronize()
        self._select(idx, out=buffer)
        x = buffer.to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._staging[self._turn] = (buffer, done)
        self._turn ^= 1
        return x

    def _select(self, idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The rows ``idx`` of the store (read in parallel while they come from the disk)."""
        if self._advice is None:
            return torch.index_select(self.images, 0, idx, out=out)
        started = self._advice.before(idx)
        rows = torch.index_select(self.images, 0, idx, out=out)
        self._advice.after(started, len(idx))
        return rows

    def next(self, with_labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next shard on the device (images as floats in [-1, 1]), and labels or None."""
        idx = self.sampler.next_indices()
        mirrored = None
        if self.xflip:
            mirrored, idx = idx >= self.size, idx % self.size
        x = self._gather(idx)
        if mirrored is not None:  # on the device, without a host read
            flip = mirrored.to(self.device, non_blocking=True).view(-1, *[1] * (x.dim() - 1))
            x = torch.where(flip, x.flip(-1), x)
        if self.memory_format is not torch.contiguous_format:  # on the uint8 copy: 4× less
            x = x.contiguous(memory_format=self.memory_format)
        x = to_model_range(x)  # .float() keeps the memory format
        if not with_labels:
            return x, None
        return x, self.labels.index_select(0, idx).to(self.device, non_blocking=True)
