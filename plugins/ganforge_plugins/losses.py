"""Adversarial losses: pure functions of critic outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge import hookimpl
from ganforge.components import CriticOutput


class NonSaturatingBCE:
    """The standard GAN loss with the non-saturating generator term (Goodfellow et al. 2014).

    D minimises ``softplus(-D(x)) + softplus(D(G(z)))``; G minimises ``softplus(-D(G(z)))``.
    """

    needs_real_for_g = False

    def d_loss(self, real: CriticOutput, fake: CriticOutput, y_real, y_fake) -> torch.Tensor:
        return F.softplus(-real.logits).mean() + F.softplus(fake.logits).mean()

    def g_loss(self, fake: CriticOutput, real, y_real, y_fake) -> torch.Tensor:
        return F.softplus(-fake.logits).mean()


@hookimpl
def ganforge_register_losses(register):
    register("bce", NonSaturatingBCE)
