"""The autoencoder plugin: the network's contract, its recipes (the critic switched on after
the warm-up, with the adaptive weight), and a trained export reconstructing a folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ganforge.plugins import Plugins
from ganforge.recipe import load_recipe
from ganforge.runfiles import read_metrics
from ganforge.sampling import write_from_inputs
from PIL import Image

from ganforge_autoencoder.networks import Autoencoder

#: Every recipe of the plugin, shrunk to seconds on synthetic 28-px grey images; the
#: perceptual term over the ``identity`` extractor (nothing to train at first use).
TINY = (
    "data={name='synthetic', resolution=28, channels=1, size=64}",
    "generator.width=8",
    "discriminator.width=4",
    "regularizers.perceptual.extractor=identity",
    "loss.critic_start=1",
    "train.batch_size=8",
    "train.log_every=1",
    "eval.every=0",
)


def test_the_autoencoder_reconstructs_through_a_smaller_code():
    ae = Autoencoder(
        resolution=28, channels=1, num_classes=0, input_channels=1, input_resolution=28, width=8
    )
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    code = ae.encode(x)
    assert code.shape == (2, 4, 7, 7) and code.numel() < x.numel()
    out = ae(torch.empty(2, 0), None, source=x)
    assert out.shape == x.shape and out.abs().max() <= 1
    assert ae.last_layer is ae.head.weight
    with pytest.raises(ValueError, match="identity"):
        Autoencoder(resolution=28, channels=1, num_classes=0, input_channels=1, input_resolution=7)


@pytest.mark.parametrize("name", ["autoencoder:fashion", "autoencoder:fashion_rec"])
def test_each_recipe_trains_and_reconstructs_a_folder(name, run_recipe, tmp_path):
    run = run_recipe(name, *TINY, steps=2)
    logged = [r for r in read_metrics(run) if "g_loss" in r]
    adversarial = name == "autoencoder:fashion"
    # The critic trains from loss.critic_start on (step 2), its term scaled by the adaptive weight.
    assert [("d_loss" in r) for r in logged] == [False, adversarial]
    assert ("reg/adversarial_weight" in logged[-1]) is adversarial
    assert all("reg/perceptual" in r and "reg/reconstruction" in r for r in logged)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    written = write_from_inputs(run / "generator.safetensors", str(folder), tmp_path / "out")
    assert [p.name for p in written] == ["img_0.png", "img_1.png"]


def test_the_baseline_differs_only_in_the_adversarial_weight():
    registry = Plugins().registry
    gan, rec = (
        load_recipe(f"autoencoder:{n}", (), registry).tables for n in ("fashion", "fashion_rec")
    )
    assert gan["loss"]["adversarial_weight"] > 0 and rec["loss"]["adversarial_weight"] == 0
    for section in ("data", "input", "generator", "regularizers", "optim"):
        assert gan[section] == rec[section], section
