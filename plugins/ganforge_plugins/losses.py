"""Adversarial losses: pure functions of critic outputs.

Every formula is written in terms of the critic's logits: ``r = D(x)`` on real images and
``f = D(G(z))`` on fakes, each a ``(B,)`` tensor, and ``E`` the mean over the batch.
Logits are read in float32, so mixed-precision runs reduce their losses at full precision.
``acgan`` adds class cross-entropy on the critic's ``class_logits`` to one of the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge import hookimpl
from ganforge.components import CriticOutput
from ganforge.errors import GanforgeError


def _logits(out: CriticOutput) -> torch.Tensor:
    return out.logits.float()


class NonSaturatingBCE:
    """The standard GAN loss with the non-saturating generator term (Goodfellow et al. 2014).

    D minimises ``E[softplus(-r)] + E[softplus(f)]`` (binary cross-entropy on sigmoid(D));
    G minimises ``E[softplus(-f)] = -E[log sigmoid(f)]``, which keeps its gradient when D
    rejects the fakes confidently.
    """

    needs_real_for_g = False

    def d_loss(self, real: CriticOutput, fake: CriticOutput, y_real, y_fake) -> torch.Tensor:
        return F.softplus(-_logits(real)).mean() + F.softplus(_logits(fake)).mean()

    def g_loss(self, fake: CriticOutput, real, y_real, y_fake) -> torch.Tensor:
        return F.softplus(-_logits(fake)).mean()


class MinimaxBCE(NonSaturatingBCE):
    """The original minimax GAN loss (Goodfellow et al. 2014, "Generative Adversarial Nets").

    D as in ``bce``. G minimises ``E[log(1 - sigmoid(f))] = -E[softplus(f)]``: the saturating
    form of the game's value function, whose gradient vanishes while D rejects the fakes.
    """

    def g_loss(self, fake: CriticOutput, real, y_real, y_fake) -> torch.Tensor:
        return -F.softplus(_logits(fake)).mean()


class LeastSquares:
    """Least-squares GAN with the 0-1-1 coding (Mao et al. 2017, "Least Squares GANs", eq. 2).

    D minimises ``½·E[(r - 1)²] + ½·E[f²]``; G minimises ``½·E[(f - 1)²]``.
    """

    needs_real_for_g = False

    def d_loss(self, real: CriticOutput, fake: CriticOutput, y_real, y_fake) -> torch.Tensor:
        return 0.5 * (_logits(real) - 1).square().mean() + 0.5 * _logits(fake).square().mean()

    def g_loss(self, fake: CriticOutput, real, y_real, y_fake) -> torch.Tensor:
        return 0.5 * (_logits(fake) - 1).square().mean()


class Wasserstein:
    """The Wasserstein GAN critic loss (Arjovsky et al. 2017, "Wasserstein GAN").

    D minimises ``E[f] - E[r]``; G minimises ``-E[f]``. D must be kept Lipschitz, e.g. with
    the ``gradient_penalty`` regularizer (Gulrajani et al. 2017).
    """

    needs_real_for_g = False

    def d_loss(self, real: CriticOutput, fake: CriticOutput, y_real, y_fake) -> torch.Tensor:
        return _logits(fake).mean() - _logits(real).mean()

    def g_loss(self, fake: CriticOutput, real, y_real, y_fake) -> torch.Tensor:
        return -_logits(fake).mean()


class Hinge(Wasserstein):
    """The hinge loss (Lim & Ye 2017, "Geometric GAN"; Miyato et al. 2018, SN-GAN).

    D minimises ``E[relu(1 - r)] + E[relu(1 + f)]``; G minimises ``-E[f]`` as in WGAN.
    """

    def d_loss(self, real: CriticOutput, fake: CriticOutput, y_real, y_fake) -> torch.Tensor:
        return F.relu(1 - _logits(real)).mean() + F.relu(1 + _logits(fake)).mean()


class _Relativistic:
    """A relativistic loss: G's term is D's with the roles of real and fake swapped.

    Subclasses define ``_loss(a, b)``, the loss for a critic that should score ``a`` above
    ``b``: D minimises ``_loss(r, f)``, G minimises ``_loss(f, r)``.
    """

    needs_real_for_g = True

    def _loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_loss(self, real: CriticOutput, fake: CriticOutput, y_real, y_fake) -> torch.Tensor:
        return self._loss(_logits(real), _logits(fake))

    def g_loss(self, fake: CriticOutput, real: CriticOutput, y_real, y_fake) -> torch.Tensor:
        return self._loss(_logits(fake), _logits(real))


class RelativisticStandard(_Relativistic):
    """Relativistic standard GAN (Jolicoeur-Martineau 2018, "The relativistic discriminator").

    Pairs the i-th real and fake: D minimises ``E[softplus(-(r_i - f_i))]``;
    G minimises ``E[softplus(-(f_i - r_i))]``.
    """

    def _loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.softplus(-(a - b)).mean()


class RelativisticAverageHinge(_Relativistic):
    """Relativistic average hinge GAN (Jolicoeur-Martineau 2018, "The relativistic discriminator").

    D minimises ``E[relu(1 - (r - E[f]))] + E[relu(1 + (f - E[r]))]``;
    G minimises ``E[relu(1 - (f - E[r]))] + E[relu(1 + (r - E[f]))]``.
    """

    def _loss(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - (a - b.mean())).mean() + F.relu(1 + (b - a.mean())).mean()


#: The losses that score reals and fakes independently, by registered name: ``acgan``'s bases.
ABSOLUTE = {
    "bce": NonSaturatingBCE,
    "minimax": MinimaxBCE,
    "lsgan": LeastSquares,
    "wgan": Wasserstein,
    "hinge": Hinge,
}
RELATIVISTIC = {"rsgan": RelativisticStandard, "rahinge": RelativisticAverageHinge}


class AuxiliaryClassifier:
    """The auxiliary-classifier GAN loss (Odena et al. 2017, "Conditional Image Synthesis with
    Auxiliary Classifier GANs"), on top of the ``adversarial`` loss.

    With ``c_r``, ``c_f`` the critic's class logits on reals and fakes and ``CE`` the mean
    cross-entropy, D minimises ``adv_D + w·(CE(c_r, y_r) + CE(c_f, y_f))`` and G minimises
    ``adv_G + w·CE(c_f, y_f)``, ``w`` being ``class_weight``. Needs labels and a critic with a
    classifier head: ``data.conditional = true`` and ``discriminator.condition = "auxiliary"``.
    """

    needs_real_for_g = False
    uses_class_logits = True

    def __init__(self, *, adversarial: str = "bce", class_weight: float = 1.0):
        if adversarial not in ABSOLUTE:
            choices = ", ".join(map(repr, ABSOLUTE))
            raise ValueError(f"adversarial must be one of {choices}, not {adversarial!r}")
        if class_weight < 0:
            raise ValueError(f"class_weight must be >= 0, got {class_weight}")
        self.adversarial = ABSOLUTE[adversarial]()
        self.class_weight = class_weight

    def _class_loss(self, out: CriticOutput, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise GanforgeError(
                "loss 'acgan' needs class labels: set data.conditional = true "
                '(with discriminator.condition = "auxiliary")'
            )
        if out.class_logits is None:
            raise GanforgeError(
                "loss 'acgan' needs class logits from the critic: set "
                'discriminator.condition = "auxiliary" (with data.conditional = true)'
            )
        return self.class_weight * F.cross_entropy(out.class_logits.float(), y)

    def d_loss(self, real: CriticOutput, fake: CriticOutput, y_real, y_fake) -> torch.Tensor:
        adversarial = self.adversarial.d_loss(real, fake, y_real, y_fake)
        return adversarial + self._class_loss(real, y_real) + self._class_loss(fake, y_fake)

    def g_loss(self, fake: CriticOutput, real, y_real, y_fake) -> torch.Tensor:
        adversarial = self.adversarial.g_loss(fake, real, y_real, y_fake)
        return adversarial + self._class_loss(fake, y_fake)


@hookimpl
def ganforge_register_losses(register):
    for name, factory in {**ABSOLUTE, **RELATIVISTIC}.items():
        register(name, factory)
    register("acgan", AuxiliaryClassifier, conditional=True)
