"""The built-in adversarial losses against their papers' formulas, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ganforge.components import CriticOutput, Loss
from ganforge.plugins import Plugins

REAL, FAKE = [2.0, -1.0], [0.5, -3.0]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def relu(x: float) -> float:
    return max(x, 0.0)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def pairs():
    return list(zip(REAL, FAKE, strict=True))


MEAN_R, MEAN_F = mean(REAL), mean(FAKE)

# name: (needs_real_for_g, expected D loss, expected G loss), straight from each paper.
EXPECTED = {
    "bce": (
        False,
        mean(softplus(-r) for r in REAL) + mean(softplus(f) for f in FAKE),
        mean(softplus(-f) for f in FAKE),
    ),
    "minimax": (
        False,
        mean(softplus(-r) for r in REAL) + mean(softplus(f) for f in FAKE),
        mean(math.log(1 - 1 / (1 + math.exp(-f))) for f in FAKE),
    ),
    "lsgan": (
        False,
        0.5 * mean((r - 1) ** 2 for r in REAL) + 0.5 * mean(f**2 for f in FAKE),
        0.5 * mean((f - 1) ** 2 for f in FAKE),
    ),
    "wgan": (False, MEAN_F - MEAN_R, -MEAN_F),
    "hinge": (
        False,
        mean(relu(1 - r) for r in REAL) + mean(relu(1 + f) for f in FAKE),
        -MEAN_F,
    ),
    "rsgan": (
        True,
        mean(softplus(-(r - f)) for r, f in pairs()),
        mean(softplus(-(f - r)) for r, f in pairs()),
    ),
    "rahinge": (
        True,
        mean(relu(1 - (r - MEAN_F)) for r in REAL) + mean(relu(1 + (f - MEAN_R)) for f in FAKE),
        mean(relu(1 - (f - MEAN_R)) for f in FAKE) + mean(relu(1 + (r - MEAN_F)) for r in REAL),
    ),
}


def build(name: str) -> Loss:
    return Plugins().registry.build("loss", name, {}, {})


def outputs(real=REAL, fake=FAKE, requires_grad=False) -> tuple[CriticOutput, CriticOutput]:
    return tuple(
        CriticOutput(torch.tensor(values, requires_grad=requires_grad)) for values in (real, fake)
    )


def test_every_loss_is_registered():
    assert set(EXPECTED) <= set(Plugins().registry.names("loss"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loss_matches_the_papers_formula(name):
    needs_real, d_expected, g_expected = EXPECTED[name]
    loss = build(name)
    assert isinstance(loss, Loss)
    assert loss.needs_real_for_g is needs_real
    real, fake = outputs()
    d = loss.d_loss(real, fake, None, None)
    g = loss.g_loss(fake, real if needs_real else None, None, None)
    assert d.shape == g.shape == ()
    assert d.item() == pytest.approx(d_expected, rel=1e-6)
    assert g.item() == pytest.approx(g_expected, rel=1e-6)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_gradients_push_fakes_and_reals_the_right_way(name):
    # Scores in (0, 1), where no loss is saturated or past its target (LSGAN's 0 and 1).
    loss = build(name)
    real, fake = outputs([0.7, 0.1], [0.4, 0.9], requires_grad=True)
    (g_fake,) = torch.autograd.grad(loss.g_loss(fake, real, None, None), fake.logits)
    assert (g_fake < 0).all()  # G descends: every fake score goes up
    d_real, d_fake = torch.autograd.grad(
        loss.d_loss(real, fake, None, None), [real.logits, fake.logits]
    )
    assert (d_real < 0).all() and (d_fake > 0).all()  # D: real scores up, fake ones down


def test_losses_reduce_in_float32_for_low_precision_logits():
    real, fake = (CriticOutput(torch.tensor(v, dtype=torch.bfloat16)) for v in (REAL, FAKE))
    for name in EXPECTED:
        loss = build(name)
        assert loss.d_loss(real, fake, None, None).dtype == torch.float32
        assert loss.g_loss(fake, real, None, None).dtype == torch.float32


def test_a_relativistic_loss_gets_the_real_scores_in_the_g_phase(tiny):
    trainer = tiny("loss.name=rahinge", "train.steps=1")
    calls = []
    trainer.D.register_forward_pre_hook(lambda module, args: calls.append(args[0]))
    d, g = trainer.train_step(0)
    assert torch.isfinite(d.loss) and torch.isfinite(g.loss)
    assert len(calls) == 4  # D phase: real, fake; G phase: fake, then real again
    assert torch.equal(calls[3], calls[0])
