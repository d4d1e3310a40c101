"""Toy 2-D sets: the data matches its definition, the scores recognise it, runs work end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from ganforge_plugins.toy2d import centres, mode_stats, sample_toy, toy2d_source

TOY = (
    "data={name='toy2d', dataset='25gaussians', size=2048}",
    "generator.name=mlp",
    "discriminator.name=mlp",
    "generator.hidden=16",
    "discriminator.hidden=16",
    "train.sample_count=64",
)


def test_25_gaussians_follow_the_wgan_gp_definition():
    means, sigma = centres("25gaussians")
    assert len(means) == 25 and sigma == pytest.approx(0.05 / 2.828)
    assert means.min() == pytest.approx(-4 / 2.828) and means.max() == pytest.approx(4 / 2.828)
    points = sample_toy("25gaussians", 20_000, np.random.default_rng(0))
    assert points.dtype == np.float32 and points.shape == (20_000, 2)
    nearest = np.linalg.norm(points[:, None] - means[None], axis=2).min(1)
    assert np.sqrt((nearest**2).mean() / 2) == pytest.approx(sigma, rel=0.05)


@pytest.mark.parametrize("dataset", ["8gaussians", "25gaussians"])
def test_real_samples_score_every_mode_and_almost_all_high_quality(dataset):
    stats = mode_stats(sample_toy(dataset, 10_000, np.random.default_rng(1)), dataset)
    assert stats["modes"] == stats["num_modes"]
    assert stats["high_quality"] > 0.98  # 3σ in 2-D holds 98.9% of a Gaussian


def test_collapsed_or_blurred_samples_score_badly():
    one_mode = np.zeros((10_000, 2), np.float32)
    assert mode_stats(one_mode, "25gaussians")["modes"] == 1
    blurred = np.random.default_rng(0).uniform(-1.5, 1.5, (10_000, 2))
    assert mode_stats(blurred, "25gaussians")["high_quality"] < 0.1


def test_swissroll_and_ring_are_point_sets_without_modes():
    for dataset in ("swissroll", "ring"):
        points = sample_toy(dataset, 1000, np.random.default_rng(0))
        assert points.shape == (1000, 2) and np.abs(points).max() < 3
        with pytest.raises(ValueError, match="no modes"):
            mode_stats(points, dataset)
    ring = sample_toy("ring", 1000, np.random.default_rng(0))
    assert np.linalg.norm(ring, axis=1).mean() == pytest.approx(1.0, abs=0.01)


def test_point_data_trains_samples_a_scatter_and_exports(tiny):
    trainer = tiny(
        *TOY,
        "train.steps=2",
        "loss.name=wgan",
        "regularizers.gradient_penalty.weight=0.1",
        "train.n_critic=2",
    )
    assert trainer.parts.data.channels == 2 and trainer.parts.data.resolution == 0
    path = trainer.fit()
    picture = Image.open(trainer.run_dir / "samples" / "step_000002.png")
    assert picture.size == (384, 384)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["ganforge"])
    assert meta["output"] == {"kind": "points", "channels": 2, "resolution": 0, "range": None}
    # `ganforge generate` writes the points as an array or a scatter plot, not as images.
    from ganforge.cli import main
    from ganforge.export import latents, read_export

    assert main(["generate", str(path), "--num", "5", "--out", "points.npy"]) == 0
    z = latents(read_export(path)[1], 5, seed=0)
    assert np.array_equal(np.load("points.npy"), trainer.outputs.generate(z, None).numpy())
    assert main(["generate", str(path), "--out", "points.png"]) == 0
    assert Image.open("points.png").size == (384, 384)
    assert main(["generate", str(path), "--out-dir", "each"]) == 2


def test_point_data_rejects_a_resolution_and_image_models_reject_points(tiny):
    from ganforge.errors import DataError, RecipeError

    with pytest.raises(DataError, match="no resolution"):
        tiny(*TOY, "data.resolution=16")
    with pytest.raises(RecipeError, match="rejected its options"):
        tiny(*TOY, "generator={name='dcgan'}")
    assert toy2d_source(resolution=0).fingerprint != toy2d_source(resolution=0, seed=1).fingerprint
