"""The generator and discriminator: shapes, conditioning, noise, the tracked W average and
truncation."""

from __future__ import annotations

import pytest
import torch
from ganforge.components import CriticOutput
from ganforge.errors import RecipeError

from ganforge_stylegan2.discriminator import StyleGAN2Discriminator
from ganforge_stylegan2.generator import StyleGAN2Generator

TINY_G = {"z_dim": 8, "w_dim": 8, "mapping_layers": 2, "channel_base": 64, "channel_max": 8}
TINY_D = {"channel_base": 64, "channel_max": 8}


def generator(resolution=16, channels=3, num_classes=0) -> StyleGAN2Generator:
    torch.manual_seed(0)
    kwargs = {"resolution": resolution, "channels": channels, "num_classes": num_classes}
    return StyleGAN2Generator(**kwargs, **TINY_G)


def discriminator(resolution=16, channels=3, num_classes=0) -> StyleGAN2Discriminator:
    torch.manual_seed(0)
    kwargs = {"resolution": resolution, "channels": channels, "num_classes": num_classes}
    return StyleGAN2Discriminator(**kwargs, **TINY_D)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_shapes_latents_and_eval_range(resolution, channels):
    G, D = generator(resolution, channels), discriminator(resolution, channels)
    assert G.latent_shape == (8,) and G.latent_prior == "normal" and G.supports_truncation
    blocks = resolution.bit_length() - 2  # 4×4 up to the resolution
    assert G.num_ws == 2 + 3 * (blocks - 1)  # conv + toRGB, then conv, conv, toRGB per block
    z = torch.randn(5, 8)
    images, ws = G(z, return_ws=True)
    assert images.shape == (5, channels, resolution, resolution)
    assert ws.shape == (5, G.num_ws, 8) and torch.equal(ws[:, 0], ws[:, -1])
    out = D(images)
    assert isinstance(out, CriticOutput)
    assert out.logits.shape == (5,) and out.features.shape == (5, 8)
    assert torch.isfinite(out.logits).all()
    assert G.eval()(z).abs().max() <= 1  # samples and exports stay in [-1, 1]


def test_labels_condition_both_networks(fake_images):
    G, D = generator(num_classes=3).eval(), discriminator(num_classes=3)
    z, zeros, ones = torch.randn(4, 8), torch.zeros(4, dtype=torch.long), torch.ones(4).long()
    assert not torch.allclose(G(z, zeros), G(z, ones))
    x, y = fake_images(4, 3, 16, num_classes=3)
    assert D(x, y).logits.shape == (4,)
    assert not torch.allclose(D(x, zeros).logits, D(x, ones).logits)


@pytest.mark.parametrize("resolution", [4, 12, 24])
def test_resolutions_other_than_powers_of_two_are_refused(resolution):
    with pytest.raises(ValueError, match="power-of-two resolution"):
        StyleGAN2Generator(resolution=resolution, channels=3)
    with pytest.raises(ValueError, match="power-of-two resolution"):
        StyleGAN2Discriminator(resolution=resolution, channels=3)


def test_an_unsupported_resolution_in_a_recipe_is_a_recipe_error(run_recipe, tiny_recipe):
    tiny_recipe["generator"] = {"name": "stylegan2", **TINY_G}
    with pytest.raises(RecipeError, match="generator 'stylegan2' rejected its options.*24"):
        run_recipe(tiny_recipe, "data.resolution=24", steps=1)


def test_noise_is_random_in_training_and_fixed_when_sampling():
    G = generator()
    for p in G.parameters():
        if p.dim() == 0:  # noise strengths start at 0
            p.data.fill_(0.5)
    z = torch.randn(3, 8)
    assert not torch.allclose(G(z), G(z))
    G.eval()
    rng_before, w_avg = torch.get_rng_state(), G.mapping.w_avg.clone()
    assert torch.equal(G(z), G(z))
    # Sampling draws nothing from the global RNG and moves no buffer.
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(G.mapping.w_avg, w_avg)


def test_training_passes_track_the_average_w():
    G = generator()
    assert torch.equal(G.mapping.w_avg, torch.zeros(8))
    z = torch.randn(64, 8)
    G(z)
    w = G.mapping(z, None)  # a second training pass
    beta = G.mapping.w_avg_beta
    expected = (1 - beta) * w.detach().mean(0) * (1 + beta)  # two updates from 0, same z
    assert torch.allclose(G.mapping.w_avg, expected, atol=1e-6)


def test_truncation_moves_samples_toward_the_average_image():
    G = generator()
    G(torch.randn(256, 8))  # training passes: w_avg away from zero
    G.eval()
    average = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, -1))
    z = torch.randn(6, 8)
    assert torch.allclose(G(z, truncation=1.0), G(z))
    distances = [
        (G(z, truncation=psi) - average).flatten(1).norm(dim=1).mean().item()
        for psi in (1.0, 0.7, 0.4, 0.1)
    ]
    assert distances == sorted(distances, reverse=True) and distances[-1] < distances[0] / 3
    assert torch.allclose(G(z, truncation=0.0), average.expand(6, -1, -1, -1), atol=1e-6)
