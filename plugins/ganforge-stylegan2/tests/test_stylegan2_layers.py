"""The building blocks: the modulated convolution's math, minibatch standard deviation and
equalized learning rate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ganforge_stylegan2.layers import EqualLinear, minibatch_stddev, modulated_conv2d


def per_sample_reference(x, weight, styles, demodulate, padding):
    """The paper's definition: each sample convolved with its own modulated weights."""
    out = []
    for b in range(len(x)):
        w = weight * styles[b].view(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        out.append(F.conv2d(x[b : b + 1], w, padding=padding))
    return torch.cat(out)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize(("kernel", "padding"), [(3, 1), (1, 0)])
def test_modulated_conv_equals_per_sample_modulated_weights(demodulate, kernel, padding):
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, 6, generator=rng, dtype=torch.float64)
    weight = torch.randn(4, 5, kernel, kernel, generator=rng, dtype=torch.float64)
    styles = torch.randn(3, 5, generator=rng, dtype=torch.float64)
    out = modulated_conv2d(x, weight, styles, demodulate=demodulate, padding=padding)
    assert out.shape == (3, 4, 6, 6)
    expected = per_sample_reference(x, weight, styles, demodulate, padding)
    assert torch.allclose(out, expected, atol=1e-10)


def test_demodulation_undoes_the_scale_of_the_styles():
    rng = torch.Generator().manual_seed(1)
    x, weight = torch.randn(2, 6, 8, 8, generator=rng), torch.randn(3, 6, 3, 3, generator=rng)
    styles = torch.randn(2, 6, generator=rng)
    scale = torch.tensor([[5.0], [0.1]])  # a different scale per sample
    demodulated = modulated_conv2d(x, weight, styles, padding=1)
    rescaled = modulated_conv2d(x, weight, styles * scale, padding=1)
    assert torch.allclose(rescaled, demodulated, atol=1e-5)
    modulated = modulated_conv2d(x, weight, styles, demodulate=False, padding=1)
    rescaled = modulated_conv2d(x, weight, styles * scale, demodulate=False, padding=1)
    assert torch.allclose(rescaled, modulated * scale.view(2, 1, 1, 1), rtol=1e-4, atol=1e-5)


def test_demodulated_outputs_of_unit_variance_inputs_have_unit_variance():
    rng = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 66, 66, generator=rng)
    weight = torch.randn(8, 16, 3, 3, generator=rng)
    styles = torch.randn(2, 16, generator=rng) * 3 + 1  # far from unit scale
    out = modulated_conv2d(x, weight, styles)  # no padding: no zero border
    variance = out.var(dim=(2, 3))  # per sample and output channel, 64×64 values each
    assert variance.shape == (2, 8)
    assert ((variance > 0.85) & (variance < 1.15)).all(), variance
    raw = modulated_conv2d(x, weight, styles, demodulate=False).var(dim=(2, 3))
    assert raw.mean() > 10  # without demodulation the styles' scale goes straight through


@pytest.mark.parametrize(("batch", "group", "groups"), [(8, 4, 2), (6, 4, 3), (3, 4, 3)])
def test_minibatch_stddev_appends_each_groups_standard_deviation(batch, group, groups):
    x = torch.randn(batch, 6, 4, 4, generator=torch.Generator().manual_seed(3))
    out = minibatch_stddev(x, group_size=group, num_channels=2)
    assert out.shape == (batch, 8, 4, 4) and torch.equal(out[:, :6], x)
    for n in range(batch):
        members = x[n % groups :: groups]  # sample n's group: gcd(group, batch) samples
        std = (members.var(dim=0, unbiased=False) + 1e-8).sqrt()  # 6×4×4
        expected = std.reshape(2, 3, 4, 4).mean(dim=(1, 2, 3))  # one value per channel slice
        assert torch.allclose(out[n, 6:], expected.view(2, 1, 1).expand(2, 4, 4), atol=1e-6)


def test_minibatch_stddev_is_near_zero_for_identical_samples():
    x = torch.randn(1, 4, 4, 4).repeat(4, 1, 1, 1)
    assert minibatch_stddev(x)[:, 4:].abs().max() < 1e-3


@pytest.mark.parametrize("lr_mul", [1.0, 0.01])
def test_equalized_linear_starts_at_unit_gain_whatever_the_learning_rate_multiplier(lr_mul):
    torch.manual_seed(0)
    layer = EqualLinear(256, 512, bias_init=1.0, lr_mul=lr_mul)
    effective = layer.weight * layer.weight_gain
    assert abs(effective.std().item() * 256**0.5 - 1) < 0.02
    x = torch.zeros(1, 256)
    assert torch.allclose(layer(x), torch.ones(1, 512))  # the initial bias is bias_init
