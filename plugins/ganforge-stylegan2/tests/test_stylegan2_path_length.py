"""Path-length regularization: the term, its running mean, any generator, and exact resume."""

from __future__ import annotations

import pytest
import torch
from ganforge.checkpoint import latest_checkpoint
from ganforge.components import RegularizerContext
from ganforge.errors import RecipeError
from ganforge.trainer import read_metrics
from torch import nn

from ganforge_stylegan2.generator import StyleGAN2Generator
from ganforge_stylegan2.path_length import PathLength

TINY_G = {"z_dim": 8, "w_dim": 8, "mapping_layers": 2, "channel_base": 64, "channel_max": 8}


def context(generator: nn.Module, z: torch.Tensor) -> RegularizerContext:
    return RegularizerContext("g", 0, generator, None, None, None, z, None, None)


def test_the_term_follows_the_definition_and_the_running_mean_updates():
    torch.manual_seed(0)
    G = StyleGAN2Generator(resolution=16, channels=3, **TINY_G)
    z = torch.randn(8, 8)
    regularizer = PathLength(weight=2.0, decay=0.1, batch_shrink=2)
    assert regularizer.phase == "g" and regularizer.mean.item() == 0

    torch.manual_seed(1)
    term, logs = regularizer(context(G, z))
    # The same computation by hand, on the same random draws (G's noise, then n).
    torch.manual_seed(1)
    images, ws = G(z[:4], return_ws=True)  # batch_shrink = 2: half the batch
    noise = torch.randn_like(images) / 16  # √(H·W)
    (gradient,) = torch.autograd.grad((images * noise).sum(), ws)
    lengths = gradient.square().sum(dim=2).mean(dim=1).sqrt()
    mean = 0.1 * lengths.mean()  # from 0, one update with decay 0.1
    assert torch.allclose(regularizer.mean, mean)
    assert torch.allclose(logs["length"], lengths.mean()) and torch.allclose(logs["mean"], mean)
    assert torch.allclose(term, 2.0 * (lengths - mean).square().mean())
    assert term.item() > 0

    G.zero_grad()
    term.backward()  # the term trains G: mapping and synthesis both get gradients
    assert G.mapping.layers[0].weight.grad.abs().sum() > 0
    assert G.blocks[-1].conv1.weight.grad.abs().sum() > 0

    first = regularizer.mean.clone()
    _, logs = regularizer(context(G, z))
    assert torch.allclose(regularizer.mean, first + 0.1 * (logs["length"] - first))


class LinearGenerator(nn.Module):
    """images = A·z: the path length in z is ‖Aᵀn‖ exactly."""

    latent_shape = (4,)

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.randn(16, 4))

    def forward(self, z, y=None):
        return (z @ self.A.T).view(-1, 1, 4, 4)


def test_generators_without_w_are_regularized_in_z():
    torch.manual_seed(0)
    G, z = LinearGenerator(), torch.randn(6, 4)
    regularizer = PathLength(decay=1.0, batch_shrink=1)  # decay 1: the mean is this batch's
    torch.manual_seed(2)
    term, logs = regularizer(context(G, z))
    torch.manual_seed(2)
    noise = torch.randn(6, 16) / 4
    lengths = (noise @ G.A).norm(dim=1)
    assert torch.allclose(logs["length"], lengths.mean())
    assert torch.allclose(term, 2.0 * (lengths - lengths.mean()).square().mean())


@pytest.mark.parametrize("option", ["weight=-1.0", "decay=0.0", "decay=1.5", "batch_shrink=0"])
def test_bad_options_are_recipe_errors(option, run_recipe, tiny_recipe):
    with pytest.raises(RecipeError, match="regularizers.path_length: regularizer 'path_length'"):
        run_recipe(tiny_recipe, f"regularizers.path_length.{option}", steps=1)


def stylegan2_recipe(tiny_recipe) -> dict:
    """The tiny recipe with StyleGAN2 networks, R1, path length at every step, and EMA."""
    tiny_recipe.update(
        generator={"name": "stylegan2", **TINY_G},
        discriminator={"name": "stylegan2", "channel_base": 64, "channel_max": 8},
        regularizers={"r1": {"gamma": 0.1, "every": 2}, "path_length": {"decay": 0.5}},
        ema={"decay": 0.9},
    )
    return tiny_recipe


def test_the_running_mean_is_checkpointed_and_a_resumed_run_is_exact(run_recipe, tiny_recipe):
    recipe = stylegan2_recipe(tiny_recipe)
    straight = run_recipe(recipe, steps=4, name="straight")
    run_recipe(recipe, steps=2, name="resumed")
    resumed = run_recipe(recipe, steps=4, name="resumed")  # continues from step 2's checkpoint

    saved = latest_checkpoint(straight).tensors("models")
    assert saved["regularizers.path_length.mean"] > 0
    again = latest_checkpoint(resumed).tensors("models")
    assert saved.keys() == again.keys()
    assert [k for k in saved if not torch.equal(saved[k], again[k])] == []
    logged = [m["reg/path_length/mean"] for m in read_metrics(straight)]
    assert logged == [m["reg/path_length/mean"] for m in read_metrics(resumed)]
    assert len(set(logged)) == 4  # it moved at every step
