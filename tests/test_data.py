"""The core's data path: sampling, sharding, caching, conversion, and the built-in sources."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ganforge.data import (
    BatchSource,
    DataSource,
    ImageData,
    ShardedSampler,
    check_image_data,
    open_store,
)
from ganforge.errors import DataError
from ganforge_plugins.digits import digits_source
from ganforge_plugins.synthetic import synthetic_source


def test_every_image_once_per_epoch_even_across_batch_boundaries():
    sampler = ShardedSampler(size=10, batch_size=4, seed=3)
    drawn = torch.cat([sampler.next_indices() for _ in range(5)])  # 20 = two epochs
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))
    assert not torch.equal(drawn[:10], drawn[10:])  # a new permutation each epoch
    assert sampler.state_dict() == {"epoch": 2, "offset": 0}


def test_sampler_state_resumes_the_same_stream():
    a = ShardedSampler(size=7, batch_size=3, seed=0)
    for _ in range(4):
        a.next_indices()
    b = ShardedSampler(size=7, batch_size=3, seed=0)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        assert torch.equal(a.next_indices(), b.next_indices())


def test_shards_partition_the_global_batch():
    ranks = [ShardedSampler(size=50, batch_size=8, seed=1, rank=r, world_size=2) for r in (0, 1)]
    single = ShardedSampler(size=50, batch_size=8, seed=1)
    for _ in range(9):
        shards = [s.next_indices() for s in ranks]
        assert all(len(s) == 4 for s in shards)
        assert sorted(torch.cat(shards).tolist()) == sorted(single.next_indices().tolist())
    with pytest.raises(ValueError, match="does not divide"):
        ShardedSampler(size=50, batch_size=7, seed=1, world_size=2)


def test_batches_are_scaled_to_minus_one_one_with_labels():
    images = np.array([[[[0, 255]]], [[[128, 64]]]], dtype=np.uint8)  # 2×1×1×2
    data = ImageData(images, np.array([1, 0]), ["a", "b"])
    source = BatchSource(data, ShardedSampler(2, 2, seed=0), torch.device("cpu"))
    x, y = source.next(with_labels=True)
    order = y.tolist()
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    by_label = {label: x[i] for i, label in enumerate(order)}
    assert torch.allclose(by_label[1], torch.tensor([[[-1.0, 1.0]]]))
    assert source.next(with_labels=False)[1] is None


def test_xflip_draws_every_image_and_its_mirror_once_per_epoch_with_its_label():
    images = np.arange(3 * 1 * 2 * 3, dtype=np.uint8).reshape(3, 1, 2, 3)  # 3 images, 2×3
    data = ImageData(images, np.array([0, 1, 2]), ["a", "b", "c"])
    source = BatchSource(data, ShardedSampler(6, 6, seed=0), torch.device("cpu"), xflip=True)
    x, y = source.next(with_labels=True)
    drawn = sorted(
        (label, tuple(row.flatten().tolist())) for label, row in zip(y.tolist(), x, strict=True)
    )
    as_model = torch.from_numpy(images).float() / 127.5 - 1
    expected = [(i, tuple(img.flatten().tolist())) for i, img in enumerate(as_model)]
    expected += [(i, tuple(img.flip(-1).flatten().tolist())) for i, img in enumerate(as_model)]
    assert drawn == sorted(expected)


def test_xflip_is_refused_for_point_data_and_tiny_data_gets_a_warning(tiny, capsys):
    from ganforge.errors import RecipeError

    toy = ("data={name='toy2d', dataset='8gaussians', size=64}", "generator={name='mlp'}")
    with pytest.raises(RecipeError, match="data.xflip: point data has no left and right"):
        tiny(*toy, "discriminator={name='mlp'}", "data.xflip=true")
    tiny("data.size=5", "train.batch_size=8", "data.xflip=true")
    assert "the data has 5 samples, fewer than one batch" in capsys.readouterr().out


def test_the_store_decodes_once_and_memory_maps_after(tmp_path):
    calls = []

    def load():
        calls.append(1)
        return ImageData(np.full((3, 1, 4, 4), 7, np.uint8), np.array([0, 1, 1]), ["x", "y"])

    source = DataSource("unit-test-v1", load)
    first = open_store(source, 4, cache_dir=tmp_path)
    second = open_store(source, 4, cache_dir=tmp_path)
    assert len(calls) == 1
    assert isinstance(second.images, np.memmap)
    assert np.array_equal(first.images, second.images) and second.class_names == ["x", "y"]
    assert second.num_classes == 2


def stored(tmp_path, labels=None, class_names=None, key="unit-test-v2"):
    """A store of two 4×4 images (and ``labels``) in ``tmp_path``'s cache, and its folder."""
    images = np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4)
    source = DataSource(key, lambda: ImageData(images.copy(), labels, class_names))
    open_store(source, 4, cache_dir=tmp_path)
    (store,) = [p for p in (tmp_path / "data").iterdir() if p.is_dir()]
    return source, store


def test_a_damaged_store_is_rebuilt(tmp_path, capsys):
    source, store = stored(tmp_path)
    (store / "images.npy").write_bytes(b"garbage")
    assert open_store(source, 4, cache_dir=tmp_path).images.shape == (2, 1, 4, 4)
    assert "rebuilding the damaged data cache" in capsys.readouterr().out


def _replace_images(store, array):
    np.save(store / "images.npy", array)


def _write_meta(store, text):
    (store / "meta.json").write_text(text)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda s: _replace_images(s, np.zeros((2, 1, 2, 2), np.uint8)), "expected 4×4"),
        (lambda s: _replace_images(s, np.zeros((2, 1, 4, 4), np.float32) + 255), "uint8"),
        (lambda s: _replace_images(s, np.zeros((2, 2, 4, 4), np.uint8)), "channels"),
        (lambda s: _replace_images(s, np.zeros((0, 1, 4, 4), np.uint8)), "no images"),
        (lambda s: (s / "images.npy").write_bytes(b""), ""),
        (lambda s: _write_meta(s, "[]"), ""),
        (lambda s: _write_meta(s, '{"fingerprint": "unit-test-v2", "class_names": 5}'), "names"),
        (lambda s: _write_meta(s, '{"fingerprint": "other", "class_names": null}'), "other"),
        (lambda s: np.save(s / "labels.npy", np.array([0, 7])), "out of range"),
        (lambda s: np.save(s / "labels.npy", np.array([0, 1, 1])), "labels must be N"),
        (lambda s: np.save(s / "labels.npy", np.array([0, -1])), "out of range"),
    ],
)
def test_a_store_is_checked_against_the_recipe_and_its_fingerprint(
    tmp_path, capsys, damage, reason
):
    """Found by breaking the cache: a replaced store once trained a 16-px generator under a
    32-px recipe, fed D float pixels of 0-255, or crashed with a traceback. Every store is
    checked when it is opened, and damage is rebuilt from the source with a warning."""
    source, store = stored(tmp_path, labels=np.array([0, 1]), class_names=["a", "b"])
    damage(store)
    data = open_store(source, 4, cache_dir=tmp_path)
    assert data.images.dtype == np.uint8 and data.images.shape == (2, 1, 4, 4)
    assert data.labels.tolist() == [0, 1] and list(data.class_names) == ["a", "b"]
    assert np.array_equal(data.images, np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4))
    out = capsys.readouterr().out
    assert "rebuilding the damaged data cache" in out and reason in out


def test_processes_opening_one_damaged_store_at_once_all_read_a_sound_one(tmp_path):
    """Every process of a launch opens the store; with damage, each once removed the store it
    found, sometimes another's fresh rebuild just before that one read it."""
    import multiprocessing

    source, store = stored(tmp_path, key="unit-test-concurrent")
    (store / "images.npy").write_bytes(b"garbage")
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        shapes = pool.starmap(_open_shape, [(str(tmp_path),)] * 8)
    assert shapes == [(2, 1, 4, 4)] * 8
    assert [p.name for p in (tmp_path / "data").iterdir() if p.is_dir()] == [store.name]


def _open_shape(cache: str) -> tuple[int, ...]:
    images = np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4)
    source = DataSource("unit-test-concurrent", lambda: ImageData(images.copy()))
    return tuple(open_store(source, 4, cache_dir=Path(cache)).images.shape)


def test_a_read_only_cache_says_it_is_the_data_cache_and_still_reads_a_prepared_store(
    tmp_path, monkeypatch
):
    import errno

    import ganforge.data

    source, _ = stored(tmp_path, key="unit-test-prepared")
    real_open, real_mkdtemp = os.open, tempfile.mkdtemp

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    # As a read-only file system answers (the tests may run as root, whom chmod does not stop).
    monkeypatch.setattr(ganforge.data.os, "open", read_only)
    monkeypatch.setattr(ganforge.data.tempfile, "mkdtemp", read_only)
    assert open_store(source, 4, cache_dir=tmp_path).images.shape == (2, 1, 4, 4)
    fresh = DataSource("unit-test-ro", lambda: ImageData(np.zeros((2, 1, 4, 4), np.uint8)))
    with pytest.raises(DataError, match="cannot write the data cache .*Read-only file system"):
        open_store(fresh, 4, cache_dir=tmp_path)
    monkeypatch.setattr(ganforge.data.os, "open", real_open)
    monkeypatch.setattr(ganforge.data.tempfile, "mkdtemp", real_mkdtemp)
    assert "GANFORGE_CACHE_DIR" in str(ganforge.data._cache_error(tmp_path, OSError("x")))


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((2, 1, 4, 4), np.float32), None, "must be uint8"),
        (np.zeros((0, 1, 4, 4), np.uint8), None, "no images"),
        (np.zeros((2, 1, 8, 8), np.uint8), None, "expected 4×4"),
        (np.zeros((2, 1, 4, 4), np.uint8), np.array([0.5, 1.0]), "labels must be N integers"),
    ],
)
def test_malformed_data_is_a_data_error(images, labels, message):
    with pytest.raises(DataError, match=message):
        check_image_data(ImageData(images, labels), 4, "test source")


def test_digits_are_labelled_and_upsampled():
    data = digits_source(resolution=32).load()
    assert data.images.shape == (1797, 1, 32, 32) and data.images.dtype == np.uint8
    assert data.num_classes == 10 and data.class_names[3] == "3"
    assert data.images.max() == 255 and data.images[:, :, :, 0].mean() < 1  # empty left column
    assert digits_source(resolution=16, channels=3).load().images.shape == (1797, 3, 16, 16)


def test_a_digits_fraction_keeps_a_fixed_share_of_every_class():
    full = digits_source(resolution=16).load()
    source = digits_source(resolution=16, fraction=0.1)
    tenth = source.load()
    expected = [round(0.1 * n) for n in np.bincount(full.labels)]  # 17-18 per class
    assert np.bincount(tenth.labels).tolist() == expected and len(tenth) == sum(expected)
    assert source.fingerprint != digits_source(resolution=16).fingerprint
    # The same images every time, each one of the full set with its own label.
    again = digits_source(resolution=16, fraction=0.1).load()
    assert np.array_equal(again.images, tenth.images)
    flat = full.images.reshape(len(full), -1)
    for image, label in zip(tenth.images[:20], tenth.labels[:20], strict=True):
        matches = np.flatnonzero((flat == image.reshape(-1)).all(1))
        assert label in full.labels[matches]
    with pytest.raises(ValueError, match="fraction must be in"):
        digits_source(resolution=16, fraction=0.0)


def test_synthetic_data_is_reproducible_and_class_dependent():
    a = synthetic_source(resolution=16, channels=3, size=64, num_classes=4, seed=5)
    b = synthetic_source(resolution=16, channels=3, size=64, num_classes=4, seed=5)
    da, db = a.load(), b.load()
    assert a.fingerprint == b.fingerprint and np.array_equal(da.images, db.images)
    assert da.num_classes == 4 and set(da.labels.tolist()) == {0, 1, 2, 3}
    means = [da.images[da.labels == k].mean(axis=(0, 2, 3)) for k in range(4)]
    assert len({tuple(np.round(m)) for m in means}) == 4  # each class has its own colour
    other = synthetic_source(resolution=32, channels=1, size=8, pattern="noise")
    assert other.fingerprint != a.fingerprint and other.load().images.shape == (8, 1, 32, 32)
    assert other.load().labels is None


class Interrupted(Exception):
    """Stands in for a preparation killed half-way."""


def counted_rows(count=1000, fail_at=None, broken=(), calls=None, max_broken=0.0):
    """Rows of 1×4×4 images whose pixels are their row number mod 251, labelled row mod 3."""
    from ganforge.rows import Chunk, Rows

    def decode(start, stop):
        if calls is not None:
            calls.append(start)
        if fail_at is not None and start == fail_at:
            raise Interrupted(f"killed at row {start}")
        rows = np.arange(start, stop)
        samples = np.broadcast_to(
            (rows % 251).astype(np.uint8)[:, None, None, None], (len(rows), 1, 4, 4)
        )
        bad = [(r, f"row {r} is broken") for r in broken if start <= r < stop]
        return Chunk(np.array(samples), rows % 3, bad)

    return Rows(
        count,
        (1, 4, 4),
        decode,
        labelled=True,
        class_names=["a", "b", "c"],
        max_broken_fraction=max_broken,
    )


def test_a_source_of_rows_is_written_chunk_by_chunk_and_matches_loading_it_whole(tmp_path):
    calls = []
    source = DataSource("rows-v1", rows=lambda: counted_rows(calls=calls))
    data = open_store(source, 4, cache_dir=tmp_path)
    assert isinstance(data.images, np.memmap) and data.images.shape == (1000, 1, 4, 4)
    assert sorted(calls) == [0, 256, 512, 768]  # chunks, each decoded once
    whole = source.load()  # the same rows in memory, through the same rules
    assert np.array_equal(data.images, whole.images) and np.array_equal(data.labels, whole.labels)
    assert data.images[300, 0, 0, 0] == 300 % 251 and data.labels[300] == 0
    assert list(data.class_names) == ["a", "b", "c"]


def test_an_interrupted_preparation_continues_where_it_stopped(tmp_path, capsys):
    calls = []
    failing = DataSource("rows-v2", rows=lambda: counted_rows(4000, fail_at=2048, calls=calls))
    with pytest.raises(Interrupted):
        open_store(failing, 4, cache_dir=tmp_path)
    assert {0, 256, 2048} <= set(calls)  # decoded (or tried) before the stop
    calls.clear()
    source = DataSource("rows-v2", rows=lambda: counted_rows(4000, calls=calls))
    data = open_store(source, 4, cache_dir=tmp_path)
    assert 2048 in calls and len(calls) < 16  # what was done is not decoded again
    assert 0 not in calls and 256 not in calls
    assert "continuing an interrupted preparation" in capsys.readouterr().err
    expected = DataSource("rows-v3", rows=lambda: counted_rows(4000)).load()
    assert np.array_equal(data.images, expected.images)
    assert np.array_equal(data.labels, expected.labels)
    assert not list(tmp_path.glob("data/*.partial"))


def test_rows_that_cannot_be_decoded_are_left_out_up_to_the_sources_limit(tmp_path, capsys):
    lenient = DataSource("rows-v4", rows=lambda: counted_rows(broken=(3, 700), max_broken=0.01))
    data = open_store(lenient, 4, cache_dir=tmp_path)
    assert len(data) == 998 and data.labels[3] == 4 % 3  # row 4 moved up, with its label
    assert "skipped 2 of 1000 images" in capsys.readouterr().err
    strict = DataSource("rows-v5", rows=lambda: counted_rows(broken=(3,), max_broken=0.0))
    with pytest.raises(DataError, match="1 of 1000 images cannot be decoded.*row 3 is broken"):
        open_store(strict, 4, cache_dir=tmp_path)


def _prepare_counting(cache: str, log: str) -> int:
    """One process's open_store of a rows source; each chunk it decodes is a line in ``log``."""
    from ganforge.rows import Chunk, Rows

    def decode(start, stop):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {start}\n")
        samples = np.full((stop - start, 1, 4, 4), start % 251, np.uint8)
        return Chunk(samples, None, [])

    source = DataSource("rows-concurrent", rows=lambda: Rows(2000, (1, 4, 4), decode))
    return len(open_store(source, 4, cache_dir=Path(cache)))


def test_processes_preparing_one_store_at_once_decode_it_once(tmp_path):
    """Every process of a launch opens the store on its first start: one decodes, the others
    wait for it and read what it wrote (none decodes the set again or writes its own copy)."""
    import multiprocessing

    log = tmp_path / "decoded.log"
    with multiprocessing.get_context("fork").Pool(3) as pool:
        sizes = pool.starmap(_prepare_counting, [(str(tmp_path), str(log))] * 3)
    assert sizes == [2000] * 3
    lines = log.read_text().split()
    starts, pids = lines[1::2], set(lines[0::2])
    assert sorted(map(int, starts)) == list(range(0, 2000, 256)) and len(pids) == 1
    stores = [p.name for p in (tmp_path / "data").iterdir() if p.is_dir()]
    assert len(stores) == 1 and "." not in stores[0]  # one store, no partial one left


def test_a_cache_that_cannot_be_locked_still_works_with_a_warning(tmp_path, monkeypatch, capsys):
    """Lustre without -o flock, NFS without lockd: flock fails; every start once failed too."""
    import errno

    import ganforge.data

    def no_locks(*args):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(ganforge.data.fcntl, "flock", no_locks)
    source = DataSource("rows-nolock", rows=lambda: counted_rows(300))
    assert len(open_store(source, 4, cache_dir=tmp_path)) == 300
    assert "cannot be locked" in capsys.readouterr().err
    assert len(open_store(source, 4, cache_dir=tmp_path)) == 300


def test_a_partial_store_left_in_a_state_no_preparation_makes_is_started_again(tmp_path, capsys):
    """Killed while broken rows were being left out, a partial store once failed every later
    start with a traceback."""
    failing = DataSource("rows-v6", rows=lambda: counted_rows(4000, fail_at=2048))
    with pytest.raises(Interrupted):
        open_store(failing, 4, cache_dir=tmp_path)
    (partial,) = (tmp_path / "data").glob("*.partial")
    np.save(partial / "images.npy", np.zeros((3990, 1, 4, 4), np.uint8))  # shorter than 4000
    data = open_store(DataSource("rows-v6", rows=lambda: counted_rows(4000)), 4, cache_dir=tmp_path)
    expected = DataSource("rows-v7", rows=lambda: counted_rows(4000)).load()
    assert np.array_equal(data.images, expected.images)
    assert "continuing" not in capsys.readouterr().err


def test_a_preparation_stopped_for_broken_rows_decodes_them_again_next_time(tmp_path):
    strict = DataSource("rows-v8", rows=lambda: counted_rows(broken=(3,), max_broken=0.0))
    with pytest.raises(DataError, match="1 of 1000 images cannot be decoded"):
        open_store(strict, 4, cache_dir=tmp_path)
    fixed = DataSource("rows-v8", rows=lambda: counted_rows(max_broken=0.0))  # say, a decoder
    assert len(open_store(fixed, 4, cache_dir=tmp_path)) == 1000  # installed since


def _listed_once(log: str, key: str) -> dict:
    import time

    from ganforge.data import node_once

    def compute():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.2)  # a walk of a large folder; longer than /proc's start-time margin
        return {"digest": "d1", "pid": os.getpid()}

    return node_once(key, compute)


def test_a_listing_is_taken_once_per_launch_and_afresh_by_the_next_run(tmp_path):
    """Every process of a launch once walked and stat'ed the whole image folder to fingerprint
    it (seconds at 1M files, in each of 8 processes). Now the first process lists it and the
    others starting with it read that; a run started later, or the process that wrote it,
    lists again, so files rewritten in place between runs are seen."""
    import multiprocessing

    log = tmp_path / "listed.log"
    fork = multiprocessing.get_context("fork")
    with fork.Pool(3) as pool:
        results = pool.starmap(_listed_once, [(str(log), "folder-a")] * 3)
    assert len(log.read_text().split()) == 1  # one process walked, all three agree
    assert len({r["pid"] for r in results}) == 1
    with fork.Pool(1) as pool:  # the next run (started after the listing was written)
        assert pool.starmap(_listed_once, [(str(log), "folder-a")])[0]["pid"] != results[0]["pid"]
    assert len(log.read_text().split()) == 2
    _listed_once(str(log), "folder-b")  # another key is its own listing
    assert len(log.read_text().split()) == 3


def test_a_listing_without_a_writable_cache_is_taken_by_each_process(tmp_path, monkeypatch):
    import multiprocessing

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(tmp_path / "a-file"))  # cannot hold folders
    log = tmp_path / "listed.log"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.starmap(_listed_once, [(str(log), "folder-a")] * 2)
    assert len(log.read_text().split()) == 2 and len({r["pid"] for r in results}) == 2


def test_rows_not_in_the_page_cache_are_named_to_the_kernel_until_gathers_are_fast(
    tmp_path, monkeypatch
):
    """A store larger than RAM (or a first epoch after a reboot) faulted its rows in one at a
    time: 166 images/s from this machine's disk. Slow gathers now name their rows first
    (madvise WILLNEED: read in parallel, 16,567 images/s); fast ones do not pay for it."""
    import mmap

    import ganforge.data

    source = DataSource("advice", rows=lambda: counted_rows(600))
    data = open_store(source, 4, cache_dir=tmp_path)
    advised = []

    class Recording:
        def __init__(self, real):
            self.real = real

        def madvise(self, option, start, length):
            assert option == mmap.MADV_WILLNEED and start % mmap.PAGESIZE == 0
            advised.append((start, length))
            self.real.madvise(option, start, length)

    def batches(fast_above: int, n: int) -> BatchSource:
        monkeypatch.setattr(ganforge.data._RowAdvice, "FAST", fast_above)
        source = BatchSource(data, ShardedSampler(600, 50, seed=0), torch.device("cpu"))
        source._advice.map = Recording(source._advice.map)
        for _ in range(n):
            idx = source.sampler.next_indices()
            expected = torch.from_numpy(np.array(data.images))[idx]
            assert torch.equal(source._select(idx), expected)  # the same rows, advised or not
        return source

    slow = batches(1 << 62, 3)  # every gather "slow": the second and third name their rows
    assert len(advised) == 100 and slow._advice.on
    row, offset = data.images[0].nbytes, data.images.offset
    for start, length in advised:  # each range ends where a row ends and covers all of it
        ends = start + length - offset
        assert ends % row == 0 and start <= offset + ends - row
    advised.clear()
    fast = batches(0, 30)  # every gather fast: nothing is named
    assert advised == [] and not fast._advice.on
    settled = batches(1 << 62, 2)  # slow, then fast for SETTLED batches: advice stops
    monkeypatch.setattr(ganforge.data._RowAdvice, "FAST", 0)
    for _ in range(ganforge.data._RowAdvice.SETTLED):
        settled._select(settled.sampler.next_indices())
    assert not settled._advice.on
    in_memory = BatchSource(ImageData(np.array(data.images)), ShardedSampler(600, 50, 0), "cpu")
    assert in_memory._advice is None  # nothing to advise for arrays in memory


def test_rows_are_named_where_they_lie_in_a_memmap_at_any_offset_or_a_slice_of_one(tmp_path):
    """numpy maps from the offset rounded down to a page: advising by ``.offset`` named the
    wrong rows (or failed, "madvise start out of bounds") for a plugin's memmap past 4 KiB."""
    from ganforge.data import _RowAdvice

    rows = (np.arange(100 * 12) % 251).astype(np.uint8).reshape(100, 12)
    path = tmp_path / "rows.bin"
    path.write_bytes(b"\0" * 27128 + rows.tobytes())
    whole = np.memmap(path, np.uint8, "c", offset=27128, shape=(100, 12))
    for images, first in ((whole, 0), (whole[10:], 10)):
        advice = _RowAdvice(images)
        mapped = np.frombuffer(advice.map, np.uint8)
        assert mapped[advice.offset : advice.offset + 12].tolist() == rows[first].tolist()
        advice.on = True
        advice.before(torch.tensor([0, len(images) - 1]))  # within the map: no ValueError
