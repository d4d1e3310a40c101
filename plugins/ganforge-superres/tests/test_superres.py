"""The superres plugin: its networks' contracts, its recipes, and a trained export used as a
user would (``generate --input`` on a folder of low-resolution images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ganforge.plugins import Plugins
from ganforge.recipe import load_recipe
from ganforge.sampling import write_from_inputs
from ganforge_plugins.patch import PatchCritic
from PIL import Image

from ganforge_superres.networks import UNetGenerator

#: Every recipe of the plugin, shrunk to seconds on synthetic 28-px grey images.
TINY = (
    "data={name='synthetic', resolution=28, channels=1, size=64}",
    "generator.width=4",
    "discriminator.width=4",
    "train.batch_size=8",
    "eval.every=0",
)


def test_the_generator_maps_a_7px_input_to_a_28px_image():
    g = UNetGenerator(
        resolution=28, channels=1, num_classes=0, input_channels=1, input_resolution=7, width=8
    )
    source = torch.rand(3, 1, 7, 7) * 2 - 1
    out = g(torch.empty(3, 0), None, source=source)
    assert out.shape == (3, 1, 28, 28) and out.abs().max() <= 1
    assert g.last_layer is g.head.weight and g.latent_shape == (0,)
    out.mean().backward()
    assert all(p.grad is not None for p in g.parameters())
    with pytest.raises(ValueError, match="does not divide"):
        UNetGenerator(
            resolution=30, channels=1, num_classes=0, input_channels=1, input_resolution=7, depth=2
        )


@pytest.mark.parametrize("conditioned", [True, False])
def test_the_patch_critic_scores_patches_with_or_without_the_input(conditioned):
    d = PatchCritic(
        resolution=28,
        channels=1,
        num_classes=0,
        input_channels=1,
        input_resolution=7,
        width=8,
        conditioned=conditioned,
    )
    assert d.takes_input is conditioned
    x, source = torch.rand(2, 1, 28, 28), torch.rand(2, 1, 7, 7)
    out = d(x, None, source=source)
    assert out.shape == (2, 1, 7, 7)
    if conditioned:  # the input changes the score
        assert not torch.equal(out, d(x, None, source=source + 1))
    unconditional = PatchCritic(resolution=28, channels=1, num_classes=0)
    assert not unconditional.takes_input


@pytest.mark.parametrize("name", ["superres:fashion", "superres:fashion_l1"])
def test_each_recipe_trains_and_its_export_upscales_a_folder(name, run_recipe, tmp_path):
    run = run_recipe(name, *TINY, steps=2)
    folder = tmp_path / "low"
    folder.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (7, 7), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"item_{i}.png")
    written = write_from_inputs(run / "generator.safetensors", str(folder), tmp_path / "out")
    assert sorted(p.name for p in written) == [f"item_{i}.png" for i in range(3)]
    assert all(Image.open(p).size == (28, 28) for p in written)


def test_the_l1_baseline_differs_from_the_gan_recipe_only_in_the_adversarial_weight():
    registry = Plugins().registry
    gan, l1 = (load_recipe(f"superres:{n}", (), registry).tables for n in ("fashion", "fashion_l1"))
    assert gan["loss"]["adversarial_weight"] > 0 and l1["loss"]["adversarial_weight"] == 0
    for section in ("data", "input", "generator", "regularizers", "optim"):
        assert gan[section] == l1[section], section
