"""R3GAN's generator and discriminator: built as the reference builds them, trainable here."""

from __future__ import annotations

import pytest
import torch

from ganforge_plugins.r3gan import R3GANDiscriminator, R3GANGenerator, Resample, ResidualBlock


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("classes", "g_params", "d_params"),
    # Counted from brownvc/R3GAN (R3GAN/Networks.py, commit 19a7ddf) with train.py's CIFAR10
    # preset: widths 768, 96 groups, 2 blocks in each of 4 stages, latent 64, expansion 2
    # (conditional: a 64-wide label embedding in G, a 768-wide projection in D).
    [(0, 20_732_160, 20_683_776), (10, 20_781_952, 21_280_512)],
)
def test_the_cifar10_preset_has_the_reference_models_parameters(classes, g_params, d_params):
    g = R3GANGenerator(resolution=32, channels=3, num_classes=classes, preset="cifar10")
    d = R3GANDiscriminator(resolution=32, channels=3, num_classes=classes, preset="cifar10")
    assert (count(g), count(d)) == (g_params, d_params)


def test_every_residual_block_is_the_identity_at_initialisation():
    torch.manual_seed(0)
    g = R3GANGenerator(resolution=32, channels=3, width=32, blocks=[1, 2, 1, 2])
    d = R3GANDiscriminator(resolution=32, channels=3, width=32, blocks=2)
    blocks = [m for model in (g, d) for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 6 + 8
    for block in blocks:
        x = torch.randn(2, block.expand.in_channels, 8, 8)
        assert torch.equal(block(x), x)
        # ...but not dead: the first layers are initialised, the last is zero.
        assert block.expand.weight.std() > 0 and not block.project.weight.any()


def test_resampling_keeps_a_constant_image_and_halves_or_doubles_its_size():
    x = torch.full((1, 4, 8, 8), 0.5)
    up, down = Resample(4, 4, up=True)(x), Resample(4, 4, up=False)(x)
    assert up.shape == (1, 4, 16, 16) and down.shape == (1, 4, 4, 4)
    assert torch.allclose(up[..., 2:-2, 2:-2], x.new_full((1, 4, 12, 12), 0.5))  # interior
    assert torch.allclose(down[..., 1:-1, 1:-1], x.new_full((1, 4, 2, 2), 0.5))


@pytest.mark.parametrize("resolution", [16, 32, 64, 128, 256])
def test_forward_and_backward_at_every_resolution(resolution):
    torch.manual_seed(0)
    g = R3GANGenerator(resolution=resolution, channels=3, width=16, blocks=1, num_classes=5)
    d = R3GANDiscriminator(resolution=resolution, channels=3, width=16, blocks=1, num_classes=5)
    y = torch.tensor([0, 4])
    images = g(torch.randn(2, 64), y)
    assert images.shape == (2, 3, resolution, resolution)
    logits = d(images, y)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    logits.sum().backward()
    for model in (g, d):
        grads = [p.grad for p in model.parameters()]
        assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)


def test_options_that_cannot_build_are_value_errors():
    with pytest.raises(ValueError, match="r3gan runs at"):
        R3GANGenerator(resolution=48, channels=3)
    with pytest.raises(ValueError, match="widths needs 4 values"):
        R3GANGenerator(resolution=32, channels=3, widths=[16, 16])
    with pytest.raises(ValueError, match="cardinality 5 must divide"):
        R3GANDiscriminator(resolution=16, channels=3, width=16, cardinality=5)
    with pytest.raises(ValueError, match="preset 'cifar10' has 4 stages"):
        R3GANGenerator(resolution=64, channels=3, preset="cifar10")


def test_r3gan_trains_from_a_recipe(tiny):
    trainer = tiny(
        "generator={name='r3gan', width=16, blocks=1}",
        "discriminator={name='r3gan', width=16, blocks=1}",
        "loss.name=rsgan",
        "regularizers.r1.gamma=0.1",
        "regularizers.r2.gamma=0.1",
    )
    trainer.fit()
    assert trainer.step == 2
