"""The built-in ``hf`` data source, on small local data sets built in each test (offline)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from ganforge.data import open_store
from ganforge.errors import DataError
from ganforge_plugins import hf
from ganforge_plugins.hf import hf_source

# Dark cats and bright dogs, in every mode and shape a folder of real photos mixes.
CATS = [
    ((20, 30), "RGB", (60, 20, 20)),
    ((33, 17), "RGBA", (40, 40, 40, 0)),
    ((16, 16), "L", 30),
    ((25, 40), "P", 50),
    ((12, 12), "RGB", (10, 60, 30)),
    ((40, 10), "L", 45),
]
DOGS = [
    ((18, 18), "RGB", (230, 210, 200)),
    ((30, 21), "RGBA", (220, 220, 220, 255)),
    ((16, 40), "L", 240),
    ((22, 22), "P", 200),
    ((50, 25), "RGB", (250, 250, 180)),
    ((14, 20), "L", 210),
]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No hub access, and the datasets cache under tmp_path, not the home directory."""
    cache = tmp_path / "hf_home"
    for var, value in [
        ("HF_DATASETS_OFFLINE", "1"),
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HOME", str(cache)),
        ("HF_DATASETS_CACHE", str(cache / "datasets")),
    ]:
        monkeypatch.setenv(var, value)
    # datasets reads these at import time, so the environment alone is too late.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def make_image(size, mode, color) -> Image.Image:
    if mode == "P":
        return Image.new("RGB", size, (color, color, color)).convert("P")
    return Image.new(mode, size, color)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def split_image(size=(60, 20)) -> Image.Image:
    """Red | black | white | green in vertical bands: its center square is black | white."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3] = (255, 0, 0)
    a[:, w // 2 : 2 * w // 3] = 255
    a[:, 2 * w // 3 :] = (0, 255, 0)
    return Image.fromarray(a)


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    for cls, specs in [("cats", CATS), ("dogs", DOGS)]:
        (root / cls).mkdir(parents=True)
        for i, (size, mode, color) in enumerate(specs):
            make_image(size, mode, color).save(root / cls / f"{i}.png")
    return root


def pets_dataset(n=6, **columns) -> datasets.Dataset:
    """n PNG-encoded images (gray value 20 * i) plus the given extra columns."""
    images = [png(Image.new("RGB", (10 + i, 12), (20 * i,) * 3)) for i in range(n)]
    ds = datasets.Dataset.from_dict({"image": images, **columns})
    return ds.cast_column("image", datasets.Image())


def load(path, resolution=8, **kwargs):
    return hf_source(resolution=resolution, path=str(path), **kwargs).load()


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_imagefolder_gives_images_labels_and_class_names(folder):
    before = files_under(folder)
    data = load(folder, resolution=8)
    assert data.images.shape == (12, 3, 8, 8) and data.images.dtype == np.uint8
    assert list(data.class_names) == ["cats", "dogs"]
    assert data.labels.dtype == np.int64 and np.bincount(data.labels).tolist() == [6, 6]
    # each label sits beside its own images: cats are dark, dogs bright, in every input mode
    means = data.images.reshape(12, -1).mean(axis=1)
    assert means[data.labels == 0].max() < 70 and means[data.labels == 1].min() > 190
    assert files_under(folder) == before  # nothing written into the user's data


def test_non_square_images_are_center_cropped_not_squashed(tmp_path):
    (tmp_path / "wide").mkdir()
    split_image((60, 20)).save(tmp_path / "wide" / "a.png")
    split_image((60, 20)).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "wide" / "b.png")
    data = load(tmp_path / "wide", resolution=8)
    assert data.labels is None and data.class_names is None  # no class subfolders
    wide, tall = data.images.astype(int)
    assert wide.shape == (3, 8, 8)
    # only the black | white middle survives; the red and green sides are cropped away
    assert wide[:, :, :3].max() < 30 and wide[:, :, 5:].min() > 225
    # squashed, the edges would be pure red and green; cropped, only filter ringing is left
    assert np.abs(wide[0] - wide[1]).max() < 40 and np.abs(wide[1] - wide[2]).max() < 40
    # rotated 90° counter-clockwise: the black band is now below the white one
    assert tall[:, 5:, :].max() < 30 and tall[:, :3, :].min() > 225


def test_resize_pad_keeps_every_pixel_column_and_stretch_squashes(tmp_path, capsys):
    """Photos of 3:1 lose two thirds to the default crop, which now says so; "pad" keeps the
    whole image on black, "stretch" keeps it all squashed to a square."""
    (tmp_path / "wide").mkdir()
    split_image((60, 20)).save(tmp_path / "wide" / "a.png")

    def red(img):  # where the image's red left third is
        return (img[0] > 200) & (img[1] < 60) & (img[2] < 60)

    def green(img):
        return (img[1] > 200) & (img[0] < 60) & (img[2] < 60)

    cropped = load(tmp_path / "wide", resolution=12).images[0].astype(int)
    assert "1 of 1 images" in capsys.readouterr().err  # what the crop cost is said
    assert not red(cropped).any() and not green(cropped).any()  # both sides cut away
    padded = load(tmp_path / "wide", resolution=12, resize="pad").images[0].astype(int)
    assert padded[:, :3].max() < 10 and padded[:, -3:].max() < 10  # black above and below
    assert red(padded)[5:7, :2].all() and green(padded)[5:7, -2:].all()  # the whole width
    stretched = load(tmp_path / "wide", resolution=12, resize="stretch").images[0].astype(int)
    assert red(stretched)[:, :2].all() and green(stretched)[:, -2:].all()  # every row
    with pytest.raises(ValueError, match="resize must be one of 'crop', 'pad', 'stretch'"):
        hf_source(resolution=12, path=str(tmp_path / "wide"), resize="fit")
    keys = {
        hf_source(resolution=12, path=str(tmp_path / "wide"), resize=r).fingerprint
        for r in ("crop", "pad", "stretch")
    }
    assert len(keys) == 3


def test_a_file_name_that_is_not_utf8_is_named_in_one_message(tmp_path):
    import os

    (tmp_path / "pics").mkdir()
    split_image().save(tmp_path / "pics" / "good.png")
    bad = os.path.join(os.fsencode(tmp_path / "pics"), b"caf\xe9.png")
    try:
        with open(bad, "wb") as f:
            f.write(b"")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    with pytest.raises(DataError, match=r"caf\\xe9.png'.* not valid UTF-8.*rename it"):
        hf_source(resolution=8, path=str(tmp_path / "pics"))


def test_hidden_and_special_folders_are_not_classes_or_images(folder):
    """As datasets' image folders: a notebook's checkpoints and a macOS archive's companions
    are no classes, and no broken images either."""
    (folder / ".ipynb_checkpoints").mkdir()
    split_image().save(folder / ".ipynb_checkpoints" / "a.png")
    (folder / "__MACOSX" / "cats").mkdir(parents=True)
    (folder / "__MACOSX" / "cats" / "._a.png").write_bytes(b"\0\5\26\7")
    (folder / "cats" / "._b.png").write_bytes(b"\0\5\26\7")
    data = load(folder)
    assert len(data) == 12 and list(data.class_names) == ["cats", "dogs"]


def test_grayscale_becomes_rgb_and_channels_1_gives_grayscale(tmp_path):
    (tmp_path / "mix").mkdir()
    Image.new("L", (9, 9), 128).save(tmp_path / "mix" / "gray.png")
    Image.new("RGB", (9, 9), (255, 0, 0)).save(tmp_path / "mix" / "red.png")
    red, gray = sorted(load(tmp_path / "mix", resolution=4).images, key=lambda im: im[1].sum())
    assert (gray == 128).all()  # gray copied into all three channels
    assert red[:, 0, 0].tolist() == [255, 0, 0]
    one = load(tmp_path / "mix", resolution=4, channels=1)
    assert one.images.shape == (2, 1, 4, 4)
    assert sorted(one.images[:, 0, 0, 0].tolist()) == [76, 128]  # ITU-R 601 luma of red is 76


def test_parquet_file_keeps_class_label_names(tmp_path):
    ds = pets_dataset(6, label=[0, 1, 2, 0, 1, 2])
    ds = ds.cast_column("label", datasets.ClassLabel(names=["a", "b", "c"]))
    ds.to_parquet(str(tmp_path / "pets.parquet"))
    data = load(tmp_path / "pets.parquet", resolution=6)
    assert data.images.shape == (6, 3, 6, 6)
    assert list(data.class_names) == ["a", "b", "c"]
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.images[:, :, 3, 3].tolist() == [[20 * i] * 3 for i in range(6)]  # row order


def test_parquet_folder_picks_the_split_from_file_names(tmp_path):
    (tmp_path / "pq" / "data").mkdir(parents=True)
    pets_dataset(5, label=[1, 0, 1, 0, 1]).to_parquet(str(tmp_path / "pq/data/train-0.parquet"))
    pets_dataset(3, label=[2, 2, 2]).to_parquet(str(tmp_path / "pq/data/test-0.parquet"))
    assert len(load(tmp_path / "pq")) == 5
    test = load(tmp_path / "pq", split="test")
    assert len(test) == 3 and test.labels.tolist() == [2, 2, 2] and test.class_names is None
    with pytest.raises(DataError, match="could not load.*validation"):
        load(tmp_path / "pq", split="validation")


def test_save_to_disk_dataset_dict_and_arrow_file(tmp_path):
    dd = datasets.DatasetDict(
        {
            "train": pets_dataset(4, label=["dog", "cat", "dog", "emu"]),
            "test": pets_dataset(2, label=["cat", "cat"]),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    before = files_under(tmp_path / "saved")
    train = load(tmp_path / "saved")
    assert len(train) == 4
    # string labels get sorted class names, whatever the row order
    assert list(train.class_names) == ["cat", "dog", "emu"]
    assert train.labels.tolist() == [1, 0, 1, 2]
    assert len(load(tmp_path / "saved", split="test")) == 2
    with pytest.raises(DataError, match=r"no split 'valid'.*\['train', 'test'\]"):
        load(tmp_path / "saved", split="valid")
    assert files_under(tmp_path / "saved") == before

    shard = next((tmp_path / "saved" / "train").glob("*.arrow"))
    shutil.copy(shard, tmp_path / "pets.arrow")
    arrow = load(tmp_path / "pets.arrow", resolution=5, labels=False)
    assert arrow.images.shape == (4, 3, 5, 5) and arrow.labels is None


def test_columns_are_found_by_feature_type_or_named_explicitly(tmp_path):
    ds = pets_dataset(3, cls=[0, 1, 1], score=[0.5, 0.1, 0.2]).rename_column("image", "picture")
    ds.save_to_disk(str(tmp_path / "d"))
    assert load(tmp_path / "d").labels is None  # no ClassLabel and no column named label
    assert load(tmp_path / "d", label_column="cls").labels.tolist() == [0, 1, 1]
    with pytest.raises(DataError, match=r"no column 'image'.*\['picture', 'cls', 'score'\]"):
        load(tmp_path / "d", image_column="image")
    with pytest.raises(DataError, match="'score' holds .*float.*not class labels"):
        load(tmp_path / "d", label_column="score")


def test_data_without_images_or_rows_or_with_bad_labels_is_a_data_error(tmp_path):
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(DataError, match=r"no image column; columns: \['text'\]"):
        load(tmp_path / "text")
    pets_dataset(0).save_to_disk(str(tmp_path / "empty"), num_shards=1)
    with pytest.raises(DataError, match="holds no rows"):
        load(tmp_path / "empty")
    pets_dataset(2, label=[0, -1]).save_to_disk(str(tmp_path / "neg"))
    with pytest.raises(DataError, match="negative labels.*labels = false"):
        load(tmp_path / "neg")
    assert load(tmp_path / "neg", labels=False).labels is None


def test_a_broken_image_file_is_a_data_error(folder):
    (folder / "dogs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image .* of "):
        load(folder)


@pytest.mark.parametrize(
    "path",
    [
        "/no/such/dir",
        "./missing",
        "~/no-such-ganforge-data",
        "data/missing.parquet",
        "x.arrow",
        "a/b/c",
    ],
)
def test_a_missing_local_path_is_a_data_error(path):
    with pytest.raises(DataError, match="no such file or directory"):
        hf_source(resolution=8, path=path)


def test_unusable_local_paths_are_data_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="not a .parquet or .arrow file"):
        hf_source(resolution=8, path=str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="holds no images"):
        hf_source(resolution=8, path=str(tmp_path))  # only a text file here
    with pytest.raises(DataError, match="channels must be 1 or 3"):
        hf_source(resolution=8, path=str(tmp_path), channels=4)


def test_hub_name_is_loaded_lazily_and_a_failure_explains_offline_use(monkeypatch):
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = hf_source(resolution=32, path="someone/cifar-like", split="test", revision="v1")
    assert calls == []  # naming a hub dataset opens nothing until load()
    with pytest.raises(DataError, match="could not load 'someone/cifar-like'.*offline.*local"):
        source.load()
    assert calls == [("someone/cifar-like", {"split": "test", "revision": "v1"})]
    other = hf_source(resolution=32, path="someone/cifar-like", split="test", revision="v2")
    assert other.fingerprint != source.fingerprint


def test_fingerprint_is_stable_and_follows_options_and_content(folder, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("the fingerprint must not decode images")

    monkeypatch.setattr(hf, "_to_array", no_decoding)

    def fingerprint(**kwargs):
        return hf_source(**{"resolution": 8, "path": str(folder), **kwargs}).fingerprint

    base = fingerprint()
    assert fingerprint() == base
    assert fingerprint(path=str(folder) + os.sep + ".") == base  # same folder, other spelling
    variants = [
        fingerprint(resolution=16),
        fingerprint(channels=1),
        fingerprint(split="test"),
        fingerprint(labels=False),
        fingerprint(image_column="image"),
        fingerprint(label_column="label"),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    make_image((9, 9), "RGB", (1, 2, 3)).save(folder / "cats" / "new.png")
    assert fingerprint() != base


def test_open_store_decodes_once_then_reads_the_cache(folder, tmp_path, monkeypatch):
    decoded = []
    real = hf._to_array

    def counting(*args):
        decoded.append(args[-1])
        return real(*args)

    monkeypatch.setattr(hf, "_to_array", counting)
    first = open_store(hf_source(resolution=8, path=str(folder)), 8, cache_dir=tmp_path / "c")
    assert len(decoded) == 12
    again = open_store(hf_source(resolution=8, path=str(folder)), 8, cache_dir=tmp_path / "c")
    assert len(decoded) == 12  # served from the store, nothing decoded again
    assert np.array_equal(first.images, again.images)
    assert np.array_equal(first.labels, again.labels)
    assert list(again.class_names) == ["cats", "dogs"]
    open_store(hf_source(resolution=4, path=str(folder)), 4, cache_dir=tmp_path / "c")
    assert len(decoded) == 24  # another resolution is another store


def test_the_plugin_registers_hf():
    registered = {}
    hf.ganforge_register_datasets(lambda name, factory, **kw: registered.update({name: factory}))
    assert registered == {"hf": hf_source}


def test_imagefolder_split_subfolders(folder, tmp_path):
    (tmp_path / "splits").mkdir()
    shutil.copytree(folder, tmp_path / "splits" / "train")
    shutil.copytree(folder / "dogs", tmp_path / "splits" / "test" / "dogs")
    (tmp_path / "splits" / "README.txt").write_text("not an image")
    assert len(load(tmp_path / "splits")) == 12
    test = load(tmp_path / "splits", split="test")
    assert len(test) == 6 and test.images.mean() > 190  # the bright dogs
    with pytest.raises(DataError, match=r"no split 'val'; splits: \['test', 'train'\]"):
        load(tmp_path / "splits", split="val")
    with pytest.raises(DataError, match=r"no split 'test'; splits: \['train'\]"):
        load(folder, split="test")  # a plain folder of classes is one split


def break_files(folder: Path) -> list[Path]:
    """A truncated PNG, a JPEG with garbage after its header, and an empty file, among good ones."""
    good = png(make_image((30, 30), "RGB", (230, 230, 230)))
    jpeg = io.BytesIO()
    make_image((30, 30), "RGB", (20, 20, 20)).save(jpeg, format="JPEG")
    broken = {
        folder / "dogs" / "truncated.png": good[: len(good) // 2],
        folder / "cats" / "garbled.jpg": jpeg.getvalue()[:20] + b"\x00" * 200,
        folder / "cats" / "empty.png": b"",
    }
    for path, content in broken.items():
        path.write_bytes(content)
    return list(broken)


def test_broken_images_are_skipped_and_counted_up_to_a_threshold(
    folder, capsys, reliability_report
):
    broken = break_files(folder)
    data = load(folder, max_broken_fraction=0.25)
    assert data.images.shape == (12, 3, 8, 8)  # the 12 good images, the 3 broken left out
    means = data.images.reshape(12, -1).mean(axis=1)  # labels still beside their own images
    assert means[data.labels == 0].max() < 70 and means[data.labels == 1].min() > 190
    assert "skipped 3 of 15 images" in capsys.readouterr().err
    too_many = r"hf .* 3 of 15 images cannot be decoded, more than max_broken_fraction"
    with pytest.raises(DataError, match=too_many):
        load(folder)  # the default allows 1%
    with pytest.raises(DataError, match=r"max_broken_fraction must be in \[0, 1\]"):
        hf_source(resolution=8, path=str(folder), max_broken_fraction=1.5)
    reliability_report["data"]["broken image files skipped"] += len(broken)


def test_a_training_run_skips_broken_images_or_stops_with_one_message(folder, tmp_path, capsys):
    from conftest import tiny_tables
    from ganforge.cli import main
    from ganforge.recipe import dump_toml

    break_files(folder)
    recipe = tmp_path / "hf.toml"
    data = f"data={{name='hf', path='{folder}', resolution=16}}"
    recipe.write_text(dump_toml(tiny_tables(tmp_path, data, "train.steps=1")))
    assert main([str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "ganforge: error: hf " in err and "3 of 15 images cannot be decoded" in err
    assert "Traceback" not in err
    assert main([str(recipe), "data.max_broken_fraction=0.2"]) == 0
    assert "warning: hf " in (err := capsys.readouterr().err) and "skipped 3 of 15 images" in err


def test_small_mixed_mode_images_are_scaled_up_to_the_resolution(folder):
    # Every image is smaller than 64 px on its shorter side; RGB, RGBA, L and P are mixed.
    data = load(folder, resolution=64)
    assert data.images.shape == (12, 3, 64, 64)
    means = data.images.reshape(12, -1).mean(axis=1)
    assert means[data.labels == 0].max() < 70 and means[data.labels == 1].min() > 190
    gray = load(folder, resolution=64, channels=1)
    assert gray.images.shape == (12, 1, 64, 64)


def test_an_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        hf_source(resolution=8, path=str(tmp_path / "empty"))
