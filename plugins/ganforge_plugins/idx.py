"""IDX data sets (MNIST, Fashion-MNIST, KMNIST, EMNIST): the ``idx`` and ``fashion_mnist``
data sources, and the ``fashion_mnist`` feature extractor.

The IDX format (LeCun's MNIST files): a 4-byte magic number (two zero bytes, a type code, 0x08
for unsigned bytes, and the number of dimensions), one big-endian uint32 per dimension, then
the data. Images are N×H×W (``*-images-idx3-ubyte``), labels N (``*-labels-idx1-ubyte``),
either optionally gzipped. Nothing here downloads: Debian's ``dataset-fashion-mnist`` package
puts Fashion-MNIST's four files in ``/usr/share/datasets/fashion-mnist``.

The ``fashion_mnist`` extractor is a small CNN classifier trained on the training split at
first use (about two minutes on a 2-core CPU) and cached; its test-split accuracy is printed
and kept in the cached file. Its 128-d penultimate features give FD, KID and precision/recall,
its logits the Inception Score and class balance, on this data, offline.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganforge import hookimpl
from ganforge.data import DataSource, ImageData, cache_root, open_store
from ganforge.errors import DataError
from ganforge_plugins.digits import cached_classifier, ready_classifier, stratified_subset

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = {"train": ("train",), "test": ("t10k", "test")}
MAX_ITEMS = 10_000_000  # larger than any IDX set (EMNIST "by class": 814,255 images)
MAX_SIDE = 1024
#: The most an IDX file may expand to (2 GiB; EMNIST "by class", the largest, is 0.64 GB):
#: checked on the header, before anything is allocated.
MAX_BYTES = 2 << 30


def read_idx(path: Path, ndim: int, header_only: bool = False) -> np.ndarray | tuple[int, ...]:
    """The uint8 array of one IDX file (gzipped or not), checked against its header; with
    ``header_only``, the dimensions its header gives (nothing else is read)."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4 or header[:2] != b"\0\0":
                raise DataError(f"{path} is not an IDX file (its magic number is {header!r})")
            if header[2] != 0x08:
                raise DataError(f"{path}: IDX type 0x{header[2]:02x} is not unsigned bytes")
            if header[3] != ndim:
                raise DataError(f"{path} has {header[3]} dimensions, expected {ndim}")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path} is truncated in its header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            if dims[0] > MAX_ITEMS or any(d == 0 or d > MAX_SIDE for d in dims[1:]):
                raise DataError(f"{path}: implausible dimensions {dims}")
            if header_only:
                return dims
            expected = int(np.prod(dims))
            if expected > MAX_BYTES:
                raise DataError(
                    f"{path}: its header promises {dims} = {expected:,} bytes, more than the "
                    f"{MAX_BYTES:,} an IDX data set holds; the file is damaged or not IDX"
                )
            if not gzipped and path.stat().st_size < f.tell() + expected:
                raise DataError(
                    f"{path} is truncated: its header promises {dims} = {expected:,} bytes of "
                    f"data, the file holds {path.stat().st_size - f.tell():,}"
                )
            body = f.read(expected + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as err:  # unreadable, or a torn .gz
        raise DataError(f"cannot read {path}: {err}") from None
    if len(body) < expected:
        raise DataError(
            f"{path} is truncated: its header promises {dims} = {expected:,} bytes of data, "
            f"the file holds {len(body):,}"
        )
    if len(body) > expected:
        raise DataError(f"{path} holds more data than its header's {dims}")
    return np.frombuffer(body, np.uint8).reshape(dims)


def find_split(folder: Path, split: str) -> tuple[Path, Path]:
    """The images and labels files of ``split`` in ``folder`` (MNIST's names, or EMNIST's
    ``emnist-balanced-train-images-idx3-ubyte`` style)."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    found = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        matches = sorted(
            p
            for prefix in SPLITS[split]
            for suffix in ("", ".gz")
            for p in folder.glob(f"*{prefix}-{kind}-idx{ndim}-ubyte{suffix}")
            if p.is_file()
        )
        if not matches:
            raise DataError(
                f"{folder} holds no {split} {kind} (a file named like "
                f"{SPLITS[split][0]}-{kind}-idx{ndim}-ubyte[.gz])"
            )
        if len(matches) > 1 and not all(
            m.name.removesuffix(".gz") == matches[0].name for m in matches
        ):
            names = ", ".join(m.name for m in matches)
            raise DataError(f"{folder} holds several {split} {kind} files ({names}); keep one")
        found.append(matches[0])
    return found[0], found[1]


def _fit(x: np.ndarray, resolution: int) -> torch.Tensor:
    """N×H×W uint8 → N×1×R×R: padded with black when R is up to 8 pixels more than the side
    (28 → 32, as DCGAN papers pad MNIST), else resized (bilinear, antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
    side = t.shape[-1]
    if t.shape[-2] == side == resolution:
        return t
    if t.shape[-2] == side and 0 < resolution - side <= 8:
        before = (resolution - side) // 2
        after = resolution - side - before
        return F.pad(t, (before, after, before, after))
    out = F.interpolate(
        t.float(),
        size=(resolution, resolution),
        mode="bilinear",
        align_corners=False,
        antialias=resolution < side,
    )
    return out.round().clamp(0, 255).to(torch.uint8)


def _file_digest(files: list[Path]) -> str:
    """Names, sizes and modification times: the store is rebuilt when a file changes."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _contents_digest(files: list[Path]) -> str:
    """The files' bytes (as stored, compressed or not), independent of where they are."""
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]


def idx_source(
    *,
    resolution: int,
    path: str,
    split: str = "train",
    labels: bool = True,
    classes: list[int] | None = None,
    fraction: float = 1.0,
    channels: int = 1,
    transpose: bool = False,
    class_names: list[str] | None = None,
) -> DataSource:
    """Images (and labels) from the IDX files of ``split`` ("train" or "test") in the folder
    ``path``. ``classes`` keeps those labels only (renumbered 0.. in the order given);
    ``fraction`` < 1 keeps that share of each class (seeded). Images are padded with black to
    ``resolution`` when it is up to 8 pixels larger than theirs (28 → 32), else resized;
    ``channels = 3`` repeats the grey channel. ``transpose`` turns EMNIST's column-major images
    upright. ``class_names`` names the labels 0.. (default: their numbers). Evaluating a
    model trained on the train split compares it with the test split's images."""
    return _source(locals(), default_path="", what="idx", extractor="")


def _source(options: dict, *, default_path: str, what: str, extractor: str) -> DataSource:
    """The ``idx`` source with ``options`` (its keyword arguments); the named sets fill in a
    default folder, their class names and their extractor."""
    resolution, path, split = options["resolution"], options["path"], options["split"]
    labels, classes, fraction = options["labels"], options["classes"], options["fraction"]
    channels, transpose = options["channels"], options.get("transpose", False)
    class_names = options["class_names"]
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    if classes is not None and (
        not classes
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(f"classes must be distinct labels >= 0, not {classes}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if class_names is not None and not all(isinstance(n, str) for n in class_names):
        raise ValueError("class_names must be a list of strings")
    if not path and not default_path:
        raise ValueError("path (the folder holding the IDX files) is required")
    folder = _existing_folder(path, default_path, what)
    images_file, labels_file = find_split(folder, split)
    fingerprint = {
        "v": "idx-v1",
        "files": _file_digest([images_file, labels_file]),
        "split": split,
        "labels": labels,
        "classes": classes,
        "fraction": fraction,
        "channels": channels,
        "transpose": transpose,
        "resolution": resolution,
    }

    def load() -> ImageData:
        images = read_idx(images_file, 3)
        y = read_idx(labels_file, 1).astype(np.int64)
        if len(images) != len(y):
            raise DataError(
                f"{images_file.name} holds {len(images):,} images but {labels_file.name} "
                f"holds {len(y):,} labels"
            )
        names = list(class_names) if class_names else None
        keep = np.arange(len(y))
        if classes is not None:
            missing = sorted(set(classes) - set(y.tolist()))
            if missing:
                raise DataError(f"{folder}: no images of class(es) {missing}")
            remap = np.full(int(max(y.max(), max(classes))) + 1, -1, np.int64)
            remap[list(classes)] = np.arange(len(classes))
            keep = np.flatnonzero(remap[y] >= 0)
            y = remap[y]
            names = [names[c] if names and c < len(names) else str(c) for c in classes]
        keep = keep[stratified_subset(y[keep], fraction)]
        x = images[keep]
        if transpose:
            x = x.transpose(0, 2, 1)
        out = _fit(x, resolution).repeat(1, channels, 1, 1).numpy()
        if not labels:
            return ImageData(out)
        num = len(names) if names else int(y[keep].max()) + 1
        return ImageData(out, y[keep], names or [str(i) for i in range(num)])

    metadata = {}
    if extractor:  # its classifier learns from the same folder's training split
        metadata = {"eval_extractor": extractor, "eval_extractor_options": {"path": str(folder)}}
    _, height, width = read_idx(images_file, 3, header_only=True)
    if height == width and 0 < resolution - height <= 8:  # padded: exports give it back cut
        before = (resolution - height) // 2
        metadata["native_crop"] = [before, before, height, width]
    reference = None
    if split == "train":  # evaluation compares with the held-out test images, all of them

        def reference() -> DataSource:
            test = {**options, "split": "test", "fraction": 1.0}
            return _source(test, default_path=default_path, what=what, extractor=extractor)

    return DataSource(
        json.dumps(fingerprint, sort_keys=True),
        load,
        f"{what} {folder} [{split}]",
        metadata=metadata,
        reference=reference,
    )


def _existing_folder(path: str, default_path: str, what: str) -> Path:
    """The folder ``path`` (or ``default_path`` when it is empty), or one clear error saying
    how to get the files."""
    folder = Path(path or default_path).expanduser()
    if folder.is_dir():
        return folder
    if what == "fashion_mnist" and not path:
        raise DataError(
            f"fashion_mnist: {folder} does not exist. Install Fashion-MNIST's IDX files with "
            "Debian's package (`apt-get install dataset-fashion-mnist`, 31 MB), or point "
            "data.path at a folder holding train-images-idx3-ubyte.gz and its siblings; with "
            'internet, the hf source reads it from the hub: name = "hf", '
            'path = "zalando-datasets/fashion_mnist", channels = 1'
        )
    raise DataError(
        f"{what}: no such folder: {folder} (data.path: the folder holding the IDX files)"
    )


def fashion_mnist_source(
    *,
    resolution: int,
    path: str = "",
    split: str = "train",
    labels: bool = True,
    classes: list[int] | None = None,
    fraction: float = 1.0,
    channels: int = 1,
) -> DataSource:
    """Fashion-MNIST (Zalando, MIT): 60,000 train and 10,000 test 28×28 grey images of 10
    kinds of clothing, from Debian's ``dataset-fashion-mnist`` folder unless ``path`` says
    otherwise. Options as for ``idx``; its default extractor is ``fashion_mnist``."""
    options = {**locals(), "class_names": list(FASHION_CLASSES)}
    return _source(
        options, default_path=FASHION_DIR, what="fashion_mnist", extractor="fashion_mnist"
    )


# --------------------------------------------------------------------------- the extractor


class FashionClassifier(nn.Module):
    """A small CNN on 28×28 grey images; features are its 128-d penultimate layer before the
    ReLU (after it, units dead on every input would make covariances singular). Also the
    per-channel classifier of stacked data (``num_classes`` of its base)."""

    fingerprint = "fashion-mnist-cnn-v1"

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
            )

        self.body = nn.Sequential(
            block(1, 32), block(32, 64), nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 49, 128)
        )  # 28 -> 14 -> 7
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] at any resolution, 1 or 3 channels -> (features, logits). Images
        of 30–36 px are taken to be padded 28-px ones and cropped; others are resized."""
        x = x.float().mean(1, keepdim=True)  # grey
        side = x.shape[-1]
        if 28 < side <= 36:
            a = (side - 28) // 2
            x = x[..., a : a + 28, a : a + 28]
        elif side != 28:
            x = F.interpolate(x, size=28, mode="bilinear", align_corners=False, antialias=side > 28)
        features = self.body(x)
        return features, self.head(features)


def _as_model_input(data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.array(data.images)).float().div(127.5).sub(1)
    return x, torch.from_numpy(np.asarray(data.labels))


def train_fashion_classifier(
    path: str = "", epochs: int = 6, log=print
) -> tuple[FashionClassifier, float]:
    """Random ±2 px shifts and horizontal flips on the training split; returns the network
    (eval mode) and its accuracy on the test split."""
    train = open_store(fashion_mnist_source(resolution=28, path=path), 28)
    test = fashion_mnist_source(resolution=28, path=path, split="test").load()
    x, y = _as_model_input(train)
    net = fit_classifier(FashionClassifier, x, y, epochs, log, "fashion_mnist", flip=True)
    return net, accuracy(net, *_as_model_input(test))


def fit_classifier(make, x, y, epochs: int, log, what: str, flip: bool = False) -> nn.Module:
    """``make()``, trained on images ``x`` in [-1, 1] with labels ``y``: Adam on a one-cycle
    schedule to 2e-3, batches of 128 shifted by ±2 px (and flipped left-right half the time
    with ``flip``), seeded, leaving the caller's random streams alone. Returns it in eval
    mode; ``log(message)`` hears of each epoch."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = make()
        opt = torch.optim.Adam(net.parameters(), 2e-3)
        batches = (len(x) + 127) // 128
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * batches)
        for epoch in range(epochs):
            net.train()
            for idx in torch.randperm(len(x), generator=gen).split(128):
                shift = tuple(torch.randint(-2, 3, (2,), generator=gen).tolist())
                batch = torch.roll(x[idx], shift, (2, 3))
                if flip and torch.rand((), generator=gen) < 0.5:
                    batch = batch.flip(3)
                _, logits = net(batch)
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            log(f"ganforge: {what} classifier: epoch {epoch + 1}/{epochs}")
    return net.eval()


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of ``x`` a classifier puts in class ``y``."""
    with torch.no_grad():
        predicted = torch.cat([net(part)[1].argmax(1) for part in x.split(1000)])
    return (predicted == y).float().mean().item()


def fashion_extractor(path: str = "", epochs: int = 6) -> FashionClassifier:
    """The Fashion-MNIST classifier, trained at first use and cached (safetensors, with its
    test accuracy in the file's metadata). The cache is keyed by the contents of the four IDX
    files it learns from and is tested on: another copy of the same files shares it, other
    files (or changed ones) get their own classifier."""
    folder = _existing_folder(path, FASHION_DIR, "fashion_mnist")
    files = [*find_split(folder, "train"), *find_split(folder, "test")]
    name = f"fashion-mnist-cnn-v1-e{epochs}-{_contents_digest(files)}.safetensors"
    cache = cache_root() / "eval" / name
    train = lambda log: train_fashion_classifier(path, epochs, log)  # noqa: E731
    net, accuracy = cached_classifier(cache, FashionClassifier(), train, "fashion_mnist", "test")
    net.test_accuracy = accuracy
    return ready_classifier(net, "fashion-mnist-cnn-v1")


@hookimpl
def ganforge_register_datasets(register):
    register("idx", idx_source)
    register("fashion_mnist", fashion_mnist_source)


@hookimpl
def ganforge_register_feature_extractors(register):
    register("fashion_mnist", fashion_extractor)
