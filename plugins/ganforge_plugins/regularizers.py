"""D-phase regularizers: gradient penalty, R1, R2 and the CT-GAN consistency term.

Each is used as a ``[regularizers.NAME]`` recipe table whose keys are the class's keyword
arguments; the core's ``every = k`` key applies one lazily (every k steps, term × k).
Penalties on input gradients call the critic with ``float32=True`` (autocast off), so their
double backward runs at full precision under mixed precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge import hookimpl
from ganforge.components import Critic, RegularizerContext, as_critic_output, feature_list


def _require_non_negative(**options: float) -> None:
    """Reject negative options at build time, naming each one (the core reports the message)."""
    bad = [f"{name} = {value!r}" for name, value in options.items() if value < 0]
    if bad:
        raise ValueError(f"must be >= 0: {', '.join(bad)}")


def input_gradient_norms(critic: Critic, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Per-sample ``‖∇ₓ D(x)‖₂`` over all non-batch dims, differentiable w.r.t. D's parameters.

    ``x`` is detached, so no gradient reaches whatever produced it (the generator). D runs
    with autocast off in float32; the gradient keeps its graph (``create_graph=True``) so the
    penalty built on it trains D.
    """
    x = x.detach().float().requires_grad_(True)
    logits = critic(x, y, float32=True).logits
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return sample_norms(grad)


def sample_norms(grad: torch.Tensor) -> torch.Tensor:
    """Per-sample 2-norms of a batch of gradients over all non-batch dims."""
    return torch.linalg.vector_norm(grad.flatten(1), dim=1)


class GradientPenalty:
    """WGAN-GP's gradient penalty on real/fake interpolates (Gulrajani et al. 2017).

    From "Improved Training of Wasserstein GANs". On interpolates ``x̂ = ε·x_real + (1-ε)·x_fake``
    with ``ε ~ U[0, 1]`` per sample, the term is ``weight · E[(‖∇D(x̂)‖₂ - target)²]``, or
    with ``one_sided`` ``weight · E[relu(‖∇D(x̂)‖₂ - target)²]`` (only slopes above the
    target are penalised). Conditional critics see the real batch's labels at x̂ (fakes are
    generated with the same labels by default). Logs the mean gradient norm as ``grad_norm``.
    The paper's critic has no batch norm (DCGAN: ``norm = "none"``).
    """

    phase = "d"

    def __init__(self, *, weight: float = 10.0, one_sided: bool = False, target: float = 1.0):
        _require_non_negative(weight=weight, target=target)
        self.weight, self.one_sided, self.target = weight, one_sided, target

    def __call__(self, ctx: RegularizerContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        real, fake = ctx.real.detach().float(), ctx.fake.detach().float()
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        eps = torch.rand(shape, device=real.device)
        x_hat = eps * real + (1 - eps) * fake
        norms = input_gradient_norms(ctx.critic, x_hat, ctx.y_real)
        excess = norms - self.target
        if self.one_sided:
            excess = F.relu(excess)
        return self.weight * excess.square().mean(), {"grad_norm": norms.detach().mean()}


class R1:
    """The R1 penalty on real images: ``γ/2 · E[‖∇D(x_real)‖₂²]`` (Mescheder et al. 2018).

    From "Which Training Methods for GANs do actually Converge?": zero-centred on the data,
    it keeps D flat where the data is. Logs the mean gradient norm as ``grad_norm``.

    It differentiates the step's own adversarial pass on the reals, which the core runs for
    it in float32 (``ctx.passes``), as R3GAN's reference does; given no pass, it calls the
    critic once more in float32. Either way the gradient is taken with respect to the images before
    augmentation, through it (as in the reference and in StyleGAN2-ADA).
    """

    phase = "d"
    reuses: tuple[str, ...] = ("real",)

    def __init__(self, *, gamma: float = 10.0):
        _require_non_negative(gamma=gamma)
        self.gamma = gamma

    def __call__(self, ctx: RegularizerContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        (which,) = self.reuses
        if which in ctx.passes:
            norms = sample_norms(ctx.input_gradient(which))
        else:
            x, y = (ctx.fake, ctx.y_fake) if which == "fake" else (ctx.real, ctx.y_real)
            norms = input_gradient_norms(ctx.critic, x, y)
        return self.gamma / 2 * norms.square().mean(), {"grad_norm": norms.detach().mean()}


class R2(R1):
    """The R2 penalty on generated images: ``γ/2 · E[‖∇D(G(z))‖₂²]`` (Mescheder et al. 2018).

    R1's twin on the fakes, with the fakes' labels, reusing the adversarial pass on the fakes
    where it can. Logs ``grad_norm``.
    """

    reuses = ("fake",)


class Consistency:
    """CT-GAN's consistency term between two dropout passes of D on reals (Wei et al. 2018).

    From "Improving the Improved Training of Wasserstein GANs". D is evaluated twice on the
    same real batch; its dropout makes the two passes x', x'' differ. Per sample,
    ``CT = relu(d(D(x'), D(x'')) + feature_weight · d(D_(x'), D_(x'')) - margin)``, where
    ``D_`` are the penultimate features (``CriticOutput.features[-1]``; that part drops out when
    a critic returns none) and ``d`` the squared difference, averaged over feature dims as
    in the authors' code. The term is ``weight · E[CT]``. A critic without dropout (or in
    eval mode) gives two identical passes and a zero term.
    """

    phase = "d"

    def __init__(self, *, weight: float = 2.0, feature_weight: float = 0.1, margin: float = 0.0):
        _require_non_negative(weight=weight, feature_weight=feature_weight, margin=margin)
        self.weight, self.feature_weight, self.margin = weight, feature_weight, margin

    def __call__(self, ctx: RegularizerContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        first, second = (as_critic_output(ctx.critic(ctx.real, ctx.y_real)) for _ in range(2))
        distance = (first.logits.float() - second.logits.float()).square()
        mine, theirs = feature_list(first), feature_list(second)
        if mine and theirs:  # the penultimate features: the list's last
            gap = (mine[-1].float() - theirs[-1].float()).flatten(1)
            distance = distance + self.feature_weight * gap.square().mean(1)
        return self.weight * F.relu(distance - self.margin).mean(), {}


@hookimpl
def ganforge_register_regularizers(register):
    register("gradient_penalty", GradientPenalty)
    register("r1", R1)
    register("r2", R2)
    register("consistency", Consistency)
