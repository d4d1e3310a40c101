"""The IDX sources (``idx``, ``fashion_mnist``) and the ``fashion_mnist`` extractor, on small
IDX files the tests write: the default tier never needs Debian's Fashion-MNIST package."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ganforge
from conftest import run_command
from ganforge.cli import main
from ganforge.data import open_store
from ganforge.errors import DataError
from ganforge.recipe import dump_toml
from ganforge_plugins import idx
from ganforge_plugins.idx import fashion_mnist_source, idx_source, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format: magic 0 0 8 ndim, big-endian sizes, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def clothes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28×28 images whose class (0-9) shows as their background level and a bright bar
    at row 2·class + 4, so that a classifier can learn them in seconds."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = (
        rng.integers(0, 20, (n, 28, 28), dtype=np.uint8)
        + (20 * labels).astype(np.uint8)[:, None, None]
    )
    for i, c in enumerate(labels):
        images[i, 2 * c + 4 : 2 * c + 6, 4:24] = 250
    return images, labels.astype(np.uint8)


def write_set(folder, train: int = 200, test: int = 100, gz: bool = True):
    """MNIST's four file names in ``folder`` (gzipped, as Debian ships them, or raw)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    for prefix, n, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = clothes(n, seed)
        with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
            f.write(idx_bytes(images))
        with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
            f.write(idx_bytes(labels))
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_read_as_images_and_labels_padded_to_the_resolution(tmp_path, gz):
    folder = write_set(tmp_path / "set", gz=gz)
    images, labels = clothes(200)
    data = open_store(idx_source(resolution=32, path=str(folder)), 32)
    assert data.images.shape == (200, 1, 32, 32) and data.images.dtype == np.uint8
    # 28 → 32 is 2 black pixels each side, the pixels themselves untouched.
    assert np.array_equal(data.images[:, 0, 2:30, 2:30], images)
    assert not data.images[:, :, :2].any() and not data.images[:, :, :, 30:].any()
    assert np.array_equal(data.labels, labels) and data.class_names == [str(i) for i in range(10)]
    test = idx_source(resolution=28, path=str(folder), split="test").load()
    assert np.array_equal(test.images[:, 0], clothes(100, 1)[0])
    # Other sizes are resized; 3 channels repeat the grey one.
    small = idx_source(resolution=16, path=str(folder), channels=3).load()
    assert small.images.shape == (200, 3, 16, 16)
    assert np.array_equal(small.images[:, 0], small.images[:, 2])


def test_classes_fraction_and_labels_options(tmp_path):
    folder = write_set(tmp_path / "set")
    names = [f"c{i}" for i in range(10)]
    kept = idx_source(resolution=28, path=str(folder), classes=[7, 2], class_names=names).load()
    assert sorted(set(kept.labels.tolist())) == [0, 1] and kept.class_names == ["c7", "c2"]
    original = clothes(200)[1]
    assert len(kept) == int(np.isin(original, [7, 2]).sum())
    assert (kept.images[kept.labels == 0, 0, 18:20, 10] == 250).all()  # class 7's bar
    share = idx_source(resolution=28, path=str(folder), fraction=0.25).load()
    assert np.bincount(share.labels).tolist() == [5] * 10  # 25% of each class's 20
    assert idx_source(resolution=28, path=str(folder), labels=False).load().labels is None
    for bad in (
        {"classes": []},
        {"classes": [1, 1]},
        {"classes": ["a"]},
        {"fraction": 0},
        {"split": "valid"},
        {"channels": 2},
    ):
        with pytest.raises(ValueError):
            idx_source(resolution=28, path=str(folder), **bad)
    with pytest.raises(DataError, match=r"no images of class\(es\) \[42\]"):
        idx_source(resolution=28, path=str(folder), classes=[42]).load()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"\x50\x4b\x03\x04" + b[4:], "is not an IDX file"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "is not unsigned bytes"),
        (lambda b: b[:3] + b"\x02" + b[4:], "has 2 dimensions, expected 3"),
        (lambda b: b[: len(b) // 2], "is truncated"),
        (lambda b: b[:10], "truncated in its header"),
        (lambda b: b + b"\0", "holds more data than its header"),
        (lambda b: b[:4] + struct.pack(">I", 2**31) + b[8:], "implausible dimensions"),
        # Found by trying: a header of 10,000,000 × 1024 × 1024 was an immediate MemoryError.
        (lambda b: b[:4] + struct.pack(">3I", 10**7, 1024, 1024) + b[16:], "more than the"),
    ],
)
def test_a_damaged_idx_file_is_one_clear_error(tmp_path, damage, message):
    folder = write_set(tmp_path / "set", gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message):
        idx_source(resolution=28, path=str(folder)).load()


def test_a_small_gzip_whose_header_promises_gigabytes_is_refused_before_reading(tmp_path):
    """A 34 MB gzip whose header said 10,000,000 × 28 × 28 once expanded to 7.8 GB and ended
    in a traceback after 105 s; the header is now checked before anything is read."""
    import gzip

    folder = write_set(tmp_path / "set", gz=False)
    path = folder / "train-images-idx3-ubyte"
    body = path.read_bytes()
    path.unlink()
    bomb = body[:4] + struct.pack(">3I", 10**7, 28, 28) + body[16:]
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bomb))
    with pytest.raises(DataError, match="7,840,000,000 bytes, more than the"):
        idx_source(resolution=28, path=str(folder)).load()


def test_mismatched_counts_and_missing_or_torn_files(tmp_path):
    folder = write_set(tmp_path / "set", gz=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(clothes(150)[1]))
    with pytest.raises(DataError, match="holds 200 images but .* holds 150 labels"):
        idx_source(resolution=28, path=str(folder)).load()
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="holds no test labels"):
        idx_source(resolution=28, path=str(folder), split="test")
    torn = write_set(tmp_path / "gz")
    data = (torn / "train-images-idx3-ubyte.gz").read_bytes()
    (torn / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(torn / "train-images-idx3-ubyte.gz", 3)
    with pytest.raises(DataError, match="no such folder"):
        idx_source(resolution=28, path=str(tmp_path / "nowhere"))


def test_a_missing_fashion_mnist_folder_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FASHION_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataError) as missing:
        fashion_mnist_source(resolution=32)
    message = str(missing.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "zalando-datasets/fashion_mnist" in message and "data.path" in message


def test_fashion_mnist_names_its_classes_and_evaluates_on_the_test_split(tmp_path):
    folder = write_set(tmp_path / "set")
    source = fashion_mnist_source(resolution=32, path=str(folder), fraction=0.5)
    data = open_store(source, 32)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert source.metadata["eval_extractor"] == "fashion_mnist"
    reference = source.reference()
    test = open_store(reference, 32)
    assert len(test) == 100  # all of the test split, whatever fraction trains
    assert reference.fingerprint != source.fingerprint and reference.reference is None


def test_the_store_follows_the_files(tmp_path):
    """A changed file (size or time) changes the fingerprint: the cache never serves old data."""
    folder = write_set(tmp_path / "set", gz=False)
    before = idx_source(resolution=28, path=str(folder)).fingerprint
    images, labels = clothes(100, 5)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    after = idx_source(resolution=28, path=str(folder))
    assert after.fingerprint != before and len(open_store(after, 28)) == 100


def test_a_recipe_with_a_bad_idx_folder_is_one_message(tmp_path, tiny_recipe):
    tables = dict(tiny_recipe)
    tables["data"] = {"name": "fashion_mnist", "resolution": 32, "path": str(tmp_path / "no")}
    path = tmp_path / "r.toml"
    path.write_text(dump_toml(tables), encoding="utf-8")
    done = run_command([sys.executable, "-m", "ganforge", "validate", str(path)], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no such folder" in done.stderr


def test_the_fashion_classifier_cache_follows_the_files_not_the_folder(tmp_path, capsys):
    """A copy of the same files elsewhere reuses the cached classifier; other files (say MNIST's
    digits given as data.path) train their own instead of being scored by the wrong one."""
    first = write_set(tmp_path / "a", train=300, test=50)
    net = idx.fashion_extractor(path=str(first), epochs=1)
    assert "training" in capsys.readouterr().err
    copy = shutil.copytree(first, tmp_path / "elsewhere" / "a")
    again = idx.fashion_extractor(path=str(copy), epochs=1)
    assert "training" not in capsys.readouterr().err and again.fingerprint == net.fingerprint
    other = write_set(tmp_path / "b", train=310, test=50)
    idx.fashion_extractor(path=str(other), epochs=1)
    assert "training" in capsys.readouterr().err
    assert len(list((tmp_path / "cache" / "eval").glob("fashion-mnist-cnn-v1-e1-*"))) == 2
    with pytest.raises(DataError, match="no such folder"):
        idx.fashion_extractor(path=str(tmp_path / "missing"), epochs=1)


def test_the_fashion_classifier_trains_once_is_cached_and_scores_a_run(tmp_path, capsys):
    """Trained at first use on the train split (here: the tests' small set), its test accuracy
    printed and kept; the second use reads the cache; a trained generator is scored against the
    test split, beside real test images."""
    folder = write_set(tmp_path / "set", train=1500, test=200)
    net = idx.fashion_extractor(path=str(folder), epochs=3)
    err = capsys.readouterr().err
    assert "test accuracy" in err and net.test_accuracy > 0.5  # chance is 0.1
    again = idx.fashion_extractor(path=str(folder), epochs=3)
    assert "training" not in capsys.readouterr().err
    assert again.fingerprint == net.fingerprint and again.test_accuracy == net.test_accuracy
    features, logits = net(torch.zeros(3, 1, 32, 32))
    assert features.shape == (3, 128) and logits.shape == (3, 10)
    # A two-step run on the set, evaluated by the CLI against its test split.
    recipe = tmp_path / "r.toml"
    tables = {
        "run": {"name": "f", "out_dir": str(tmp_path / "run")},
        "data": {"name": "fashion_mnist", "resolution": 32, "path": str(folder)},
        "generator": {"name": "dcgan", "latent_dim": 8, "width": 4},
        "discriminator": {"name": "dcgan", "width": 4},
        "loss": {"name": "hinge"},
        "train": {"steps": 2, "batch_size": 8},
        # its path: the data's. 300 > half of the 200 test images: the reference is all of
        # them, and 300 train images are the ceiling.
        "eval": {"extractor_options": {"epochs": 3}, "every": 2, "num": 300},
    }
    recipe.write_text(dump_toml(tables), encoding="utf-8")
    assert main(["train", str(recipe)]) == 0
    assert "eval of real data (train split), the ceiling: fd" in capsys.readouterr().out
    export = tmp_path / "run" / "generator.safetensors"
    assert main(["eval", str(export), "--data", str(recipe), "--num", "50"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist-cnn-v1-" in out and "real (held out)" in out
    scores = tmp_path / "whole.json"
    whole = ["eval", str(export), "--data", str(recipe), "--num", "300", "--out", str(scores)]
    assert main(whole) == 0
    result = json.loads(scores.read_text())
    assert result["real_reference"] == 200  # the whole test split (a split in two: 100)
    generated, real = result["metrics"]["generated"], result["metrics"]["real (train split)"]
    assert real["fd"] < generated["fd"] and "real (held out)" not in result["metrics"]


def test_an_export_of_padded_data_generates_at_the_datas_own_size(tmp_path, capsys):
    """Fashion-MNIST trains at 32 with 2 black pixels of padding; `generate` once gave 32×32
    samples with that border. The export remembers where the 28×28 images lie."""
    from PIL import Image

    folder = write_set(tmp_path / "set", train=64, test=16)
    run_dir = tmp_path / "run"
    recipe = tmp_path / "r.toml"
    tables = {
        "run": {"name": "f", "out_dir": str(run_dir)},
        "data": {"name": "fashion_mnist", "resolution": 32, "path": str(folder)},
        "generator": {"name": "dcgan", "latent_dim": 8, "width": 4},
        "discriminator": {"name": "dcgan", "width": 4},
        "loss": {"name": "hinge"},
        "train": {"steps": 1, "batch_size": 8, "sample_every": 100},
    }
    recipe.write_text(dump_toml(tables), encoding="utf-8")
    assert main(["train", str(recipe)]) == 0
    export = run_dir / "generator.safetensors"
    info = ganforge.load_generator(export)[1]
    assert info.resolution == 32 and info.native_crop == (2, 2, 28, 28)
    assert main(["generate", str(export), "--num", "2", "--out-dir", str(tmp_path / "own")]) == 0
    full = ["generate", str(export), "--num", "2", "--full", "--out-dir", str(tmp_path / "full")]
    assert main(full) == 0
    with Image.open(tmp_path / "own" / "sample_00000.png") as own:
        assert own.size == (28, 28)
    with Image.open(tmp_path / "full" / "sample_00000.png") as whole:
        assert whole.size == (32, 32)
    assert main(["generate", str(export), "--num", "2", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 1, 28, 28)
    walk = ["generate", str(export), "--interpolate", "3", "--num", "1"]
    assert main([*walk, "--out", str(tmp_path / "walk.gif")]) == 0
    assert main([*walk, "--full", "--out", str(tmp_path / "whole.gif")]) == 0
    with Image.open(tmp_path / "walk.gif") as own, Image.open(tmp_path / "whole.gif") as whole:
        assert (whole.size[0] - own.size[0], whole.size[1] - own.size[1]) == (4, 4)  # one image
    # At its own resolution nothing is padded, and nothing is cut.
    assert "native_crop" not in idx.fashion_mnist_source(resolution=28, path=str(folder)).metadata


def test_data_prepare_fills_the_cache_ahead_and_data_info_says_what_it_holds(tmp_path, capsys):
    folder = write_set(tmp_path / "set", train=64, test=16)
    recipe = tmp_path / "r.toml"
    tables = {
        "run": {"name": "f"},
        "data": {"name": "fashion_mnist", "resolution": 32, "path": str(folder)},
        "generator": {"name": "dcgan"},
        "discriminator": {"name": "dcgan"},
        "loss": {"name": "hinge"},
        "train": {"steps": 1},
    }
    recipe.write_text(dump_toml(tables), encoding="utf-8")
    assert main(["data", "info", str(recipe)]) == 0
    before = capsys.readouterr().out
    assert before.count("prepared     no") == 2  # the train split and the test split
    assert main(["data", "prepare", str(recipe)]) == 0
    after = capsys.readouterr().out
    assert after.count("prepared     yes") == 2
    assert "64 of 1×32×32 uint8" in after and "16 of 1×32×32 uint8" in after
    assert "classes      10" in after and "MiB on disk" in after
    stores = [line.split()[-1] for line in after.splitlines() if line.startswith("  store")]
    assert all(Path(s, "images.npy").exists() for s in stores)
    assert main(["data", "info", str(recipe), "data.path=/nowhere"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["data"]) == 2  # an action is required
