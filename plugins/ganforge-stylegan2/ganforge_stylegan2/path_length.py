"""Path-length regularization (Karras et al. 2020): a G-phase regularizer with state.

From "Analyzing and Improving the Image Quality of StyleGAN": a fixed-size step in W should
change the image by a fixed amount, whatever the direction. For images ``g(w)`` and Gaussian
images ``n ~ N(0, I)/√(H·W)``, the length ``‖J_wᵀ n‖₂ = ‖∇_w ⟨g(w), n⟩‖₂`` is pulled towards
its running mean ``a``: the term is ``weight · E[(‖J_wᵀ n‖₂ − a)²]``. The running mean is a
buffer, so checkpoints save it and a resumed run continues exactly.
"""

from __future__ import annotations

import math

import torch
from ganforge.components import RegularizerContext
from torch import nn


def path_lengths(gradient: torch.Tensor) -> torch.Tensor:
    """Per-sample lengths of the gradient of ``⟨g(w), n⟩``.

    For per-layer latents (B×layers×w_dim) the squared norm is averaged over the layers, as in
    StyleGAN2; any other latent (B×…) gives the plain Euclidean norm.
    """
    if gradient.dim() == 3:
        return gradient.square().sum(dim=2).mean(dim=1).sqrt()
    return gradient.flatten(1).square().sum(dim=1).sqrt()


class PathLength(nn.Module):
    """Path-length regularization in W (Karras et al. 2020), ``[regularizers.path_length]``.

    ``weight`` scales ``E[(‖J_wᵀ n‖₂ − a)²]`` (the paper's γ_pl = 2); ``decay`` is the running
    mean's update rate (0.01); the term is computed on the first ``1/batch_shrink`` of the
    step's latents (2: half the batch, to save time). Generators that expose W (a ``w_dim``
    attribute and ``G(z, y, return_ws=True) -> (images, ws)``, like ``stylegan2``) are
    regularized in W; any other generator in its latent space z. The paper applies it lazily:
    ``every = 4``. Logs the mean ``length`` and the running ``mean``.
    """

    phase = "g"

    def __init__(self, *, weight: float = 2.0, decay: float = 0.01, batch_shrink: int = 2):
        super().__init__()
        if weight < 0 or not 0 < decay <= 1 or batch_shrink < 1:
            raise ValueError(
                f"need weight >= 0, decay in (0, 1] and batch_shrink >= 1; got weight = "
                f"{weight!r}, decay = {decay!r}, batch_shrink = {batch_shrink!r}"
            )
        self.weight, self.decay, self.batch_shrink = weight, decay, batch_shrink
        self.register_buffer("mean", torch.zeros(()))

    def forward(self, ctx: RegularizerContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        count = max(1, len(ctx.z) // self.batch_shrink)
        y = None if ctx.y_fake is None else ctx.y_fake[:count]
        images, latents = self._generate(ctx.generator, ctx.z[:count], y)
        images = images.float()
        # Unit-variance images per pixel, scaled so the length does not grow with resolution.
        noise = torch.randn_like(images) / math.sqrt(images[0, 0].numel())
        (gradient,) = torch.autograd.grad((images * noise).sum(), latents, create_graph=True)
        lengths = path_lengths(gradient.float())
        mean = self.mean.lerp(lengths.mean(), self.decay)
        self.mean.copy_(mean.detach())
        penalty = (lengths - mean).square().mean()
        return self.weight * penalty, {"length": lengths.detach().mean(), "mean": mean.detach()}

    @staticmethod
    def _generate(
        generator: nn.Module, z: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and the latents to differentiate them by: W where G exposes it, else z.

        G is called as a whole (never its submodules) so that a distributed wrapper sees the
        forward and synchronises the gradients.
        """
        from accelerate.utils import extract_model_from_parallel

        if getattr(extract_model_from_parallel(generator), "w_dim", None):
            return generator(z, y, return_ws=True)
        z = z.detach().requires_grad_(True)
        return generator(z, y), z
