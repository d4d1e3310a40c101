"""The built-in models: shapes and ranges, normalisation options, dropout, features, and a run
of each new option through the trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ganforge.components import CriticOutput
from ganforge.errors import RecipeError
from ganforge_plugins.dcgan import DCGANDiscriminator, DCGANGenerator
from ganforge_plugins.resnet import ResNetDiscriminator, ResNetGenerator

NORMS = ("batch", "none", "layer", "spectral")


pytestmark = pytest.mark.usefixtures("one_thread")


def norm_layers(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def check_critic(out, batch: int, feature_dim: int) -> None:
    assert isinstance(out, CriticOutput)
    assert out.logits.shape == (batch, 1) and torch.isfinite(out.logits).all()
    assert out.features.shape == (batch, feature_dim)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_dcgan_shapes_range_and_features(resolution, channels, norm):
    torch.manual_seed(0)
    G = DCGANGenerator(resolution=resolution, channels=channels, latent_dim=8, width=4)
    D = DCGANDiscriminator(resolution=resolution, channels=channels, width=4, norm=norm)
    images = G(torch.randn(3, *G.latent_shape))
    assert images.shape == (3, channels, resolution, resolution)
    assert images.abs().max() <= 1
    deepest = 4 * resolution // 8  # w, 2w, … doubling down to 4×4
    check_critic(D(images), 3, deepest * 4 * 4)


@pytest.mark.parametrize("spectral", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [32, 64])
def test_resnet_shapes_range_and_features(resolution, channels, spectral):
    torch.manual_seed(0)
    G = ResNetGenerator(resolution=resolution, channels=channels, latent_dim=16, width=4)
    D = ResNetDiscriminator(resolution=resolution, channels=channels, width=4, spectral=spectral)
    assert G.latent_shape == (16,) and G.latent_prior == "normal"
    images = G(torch.randn(3, 16))
    assert images.shape == (3, channels, resolution, resolution)
    assert images.abs().max() <= 1
    check_critic(D(images), 3, {32: 2 * 4, 64: 16 * 4}[resolution])  # pooled last block


def test_resnet_at_32px_is_sngans_cifar_model():
    """Default width: SNGAN's CIFAR-10 G (256 channels) and D (128), parameter for parameter."""

    def count(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    assert count(ResNetGenerator(resolution=32, channels=3)) == 4_276_739
    assert count(ResNetDiscriminator(resolution=32, channels=3)) == 1_053_825


@pytest.mark.parametrize(
    "factory, resolution",
    [
        (DCGANGenerator, 48),
        (DCGANDiscriminator, 8),
        (ResNetGenerator, 16),
        (ResNetGenerator, 128),
        (ResNetDiscriminator, 48),
    ],
)
def test_unsupported_resolutions_are_rejected(factory, resolution):
    with pytest.raises(ValueError, match=f"supports resolutions .* not {resolution}"):
        factory(resolution=resolution, channels=3)


def test_a_recipe_with_an_unsupported_resolution_is_a_recipe_error(tiny):
    with pytest.raises(RecipeError, match="generator 'resnet' rejected its options"):
        tiny("generator.name=resnet")  # the tiny recipe is 16 px


def test_normalisation_choices_build_what_they_name():
    def build(norm: str) -> nn.Module:
        return DCGANDiscriminator(resolution=32, channels=3, width=4, norm=norm)

    assert norm_layers(build("batch"), nn.BatchNorm2d) == 2
    assert norm_layers(build("none"), nn.BatchNorm2d) == 0
    layer = build("layer")
    assert norm_layers(layer, nn.BatchNorm2d) == 0
    assert [m.num_groups for m in layer.modules() if isinstance(m, nn.GroupNorm)] == [1, 1]
    spectral = build("spectral")
    assert norm_layers(spectral, nn.BatchNorm2d) == 0
    convs = [m for m in spectral.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert not any(parametrize.is_parametrized(m) for m in build("batch").modules())


@pytest.mark.parametrize("norm", NORMS)
def test_only_batch_norm_mixes_samples(norm):
    """Gradient penalties need a per-sample critic: a sample's logit ignores its batch."""
    torch.manual_seed(0)
    D = DCGANDiscriminator(resolution=16, channels=3, width=4, norm=norm)  # train mode
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad(), parametrize.cached():  # one spectral-norm weight for both passes
        alone, together = D(x[:1]).logits, D(x).logits[:1]
    assert torch.allclose(alone, together, atol=1e-5) == (norm != "batch")


@pytest.mark.parametrize(
    "build, size",
    [
        (lambda: DCGANDiscriminator(resolution=32, channels=3, width=4, norm="spectral"), 32),
        (lambda: ResNetDiscriminator(resolution=32, channels=3, width=4), 32),
        (lambda: ResNetDiscriminator(resolution=64, channels=3, width=2), 64),
    ],
    ids=["dcgan32", "resnet32", "resnet64"],
)
def test_spectral_norm_makes_every_layer_1_lipschitz(build, size):
    torch.manual_seed(0)
    D = build()
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)  # first and last too
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        for _ in range(100):  # one power iteration per train-mode forward
            D(x)
        D.eval()  # read the weights without another iteration
        sigmas = torch.stack([torch.linalg.matrix_norm(m.weight.flatten(1), ord=2) for m in layers])
    # Power iteration underestimates σ₁, so σ(W/σ̂) ≥ 1, and the excess shrinks like
    # (σ₂/σ₁)^(2k). Over 30 seeds the worst excess after 100 passes was 1.0e-2 for these small
    # ResNet layers (whose top singular values can be close) and 1e-4 for DCGAN's; an
    # unnormalised layer is far off (N(0, 0.02) weights: σ ≈ 0.2; Xavier ones: σ ≈ 2).
    assert sigmas.min() >= 1 - 1e-4
    assert sigmas.max() <= 1 + 2e-2


def input_size(D: nn.Module) -> tuple[int, int]:
    size = 16 if isinstance(D, DCGANDiscriminator) else 32
    return size, size


@pytest.mark.parametrize(
    "build",
    [
        lambda p: DCGANDiscriminator(resolution=16, channels=3, width=4, norm="none", dropout=p),
        lambda p: DCGANDiscriminator(resolution=16, channels=3, width=4, norm="layer", dropout=p),
        lambda p: ResNetDiscriminator(
            resolution=32, channels=3, width=4, spectral=False, dropout=p
        ),
    ],
    ids=["dcgan-none", "dcgan-layer", "resnet"],
)
def test_dropout_makes_train_passes_differ_and_eval_passes_agree(build):
    torch.manual_seed(0)
    D = build(0.3)
    x = torch.randn(4, 3, *input_size(D))
    with torch.no_grad():
        first, second = D(x), D(x)
        assert not torch.equal(first.logits, second.logits)
        assert not torch.equal(first.features, second.features)
        D.eval()
        assert torch.equal(D(x).logits, D(x).logits)
        without = build(0.0)  # no dropout: train-mode passes agree
        assert torch.equal(without(x).logits, without(x).logits)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_dropout_outside_0_to_1_is_rejected(dropout):
    with pytest.raises(ValueError, match="dropout"):
        DCGANDiscriminator(resolution=16, channels=3, dropout=dropout)


@pytest.mark.parametrize(
    "overrides",
    [
        ("discriminator.norm=layer",),
        ("discriminator.norm=spectral",),
        ("discriminator.norm=none", "discriminator.dropout=0.2"),
        (
            "generator.name=resnet",
            "discriminator.name=resnet",
            "data.resolution=32",
            "train.steps=1",
        ),
        (
            "generator.name=resnet",
            "discriminator.name=resnet",
            "data.resolution=32",
            "train.steps=1",
            "discriminator.spectral=false",
            "discriminator.dropout=0.2",
            "loss.name=hinge",
        ),
    ],
    ids=["layer", "spectral", "dropout", "resnet", "resnet-nosn-dropout"],
)
def test_each_option_trains_through_the_core(tiny, overrides):
    trainer = tiny("train.steps=2", "train.batch_size=4", "train.sample_count=2", *overrides)
    assert trainer.fit().exists()
    assert trainer.step == trainer.steps and trainer.progress.skipped.item() == 0
    for model in (trainer.G, trainer.D):
        assert all(torch.isfinite(t).all() for t in model.state_dict().values())
