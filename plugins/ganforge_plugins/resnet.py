"""ResNet generator and critic of SNGAN (Miyato et al. 2018, appendix B) for 32 and 64 px.

The same family as WGAN-GP's ResNet (Gulrajani et al. 2017). With the default ``width = 64``
the models are SNGAN's reference ones: at 32 px its CIFAR-10 G (256 channels) and D (128);
at 64 px G 16w→8w→4w→2w→w and D w→2w→4w→8w→16w.

With ``num_classes`` > 0 they are SNGAN's class-conditional models (Miyato & Koyama 2018):
conditional batch norm in G, a projection (or an auxiliary classifier) in D.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from ganforge import hookimpl
from ganforge.components import CriticOutput
from ganforge_plugins._layers import (
    Condition,
    ConditionalSequential,
    CriticConditioning,
    batch_norm,
    check_condition,
    check_resolution,
    critic_output,
    dropout_layers,
    require_labels,
    spectral_norm_all,
)

#: Channels of the 4×4 seed and after each up-sampling block, in multiples of ``width``.
GENERATOR_STAGES = {32: (4, 4, 4, 4), 64: (16, 8, 4, 2, 1)}
#: Channels and down-sampling of each critic block (the first is the optimized block).
CRITIC_STAGES = {
    32: ((2, True), (2, True), (2, False), (2, False)),
    64: ((1, True), (2, True), (4, True), (8, True), (16, True)),
}


def _xavier(layer: nn.Conv2d | nn.Linear, gain: float = 1.0):
    """SNGAN's reference initialisation: Glorot-uniform weights, zero biases."""
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _conv3(cin: int, cout: int, gain: float = math.sqrt(2)) -> nn.Conv2d:
    """A residual-path 3×3 convolution (gain √2: it feeds a ReLU)."""
    return _xavier(nn.Conv2d(cin, cout, 3, 1, 1), gain)


def _conv1(cin: int, cout: int) -> nn.Conv2d:
    """A 1×1 shortcut convolution (gain 1)."""
    return _xavier(nn.Conv2d(cin, cout, 1))


class UpBlock(nn.Module):
    """BN-ReLU-upsample-conv3×3-BN-ReLU-conv3×3, plus a 1×1 up-sampled shortcut.

    Its batch norms are class-conditional when ``num_classes`` > 0.
    """

    takes_labels = True

    def __init__(self, cin: int, cout: int, num_classes: int = 0):
        super().__init__()
        self.residual = ConditionalSequential(
            batch_norm(cin, num_classes),
            nn.ReLU(True),
            nn.Upsample(scale_factor=2),
            _conv3(cin, cout),
            batch_norm(cout, num_classes),
            nn.ReLU(True),
            _conv3(cout, cout),
        )
        # A 1×1 convolution commutes with nearest up-sampling: convolve first, at a quarter cost.
        self.shortcut = nn.Sequential(_conv1(cin, cout), nn.Upsample(scale_factor=2))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.residual(x, y) + self.shortcut(x)


class DownBlock(nn.Module):
    """ReLU-conv3×3-ReLU-conv3×3[-avgpool], plus a 1×1 shortcut when the shape changes.

    The hidden width is the input's, as in SNGAN's reference critic.
    """

    def __init__(self, cin: int, cout: int, downsample: bool):
        super().__init__()
        pool = [nn.AvgPool2d(2)] if downsample else []
        self.residual = nn.Sequential(
            nn.ReLU(),  # not in place: the shortcut reads the same input
            _conv3(cin, cin),
            nn.ReLU(True),
            _conv3(cin, cout),
            *pool,
        )
        reshape = cin != cout or downsample
        self.shortcut = nn.Sequential(_conv1(cin, cout), *pool) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class OptimizedBlock(nn.Module):
    """The critic's first block: conv3×3-ReLU-conv3×3-avgpool, plus avgpool-conv1×1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.residual = nn.Sequential(
            _conv3(cin, cout), nn.ReLU(True), _conv3(cout, cout), nn.AvgPool2d(2)
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), _conv1(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class ResNetGenerator(nn.Module):
    """SNGAN's ResNet generator: linear to 4×4, up-sampling residual blocks, BN-ReLU-conv-tanh.

    With ``num_classes`` > 0 every batch norm is class-conditional (a scale and shift per
    class, starting at 1 and 0) and ``G(z, y)`` needs the labels.
    """

    latent_prior = "normal"

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        latent_dim: int = 128,
        width: int = 64,
    ):
        super().__init__()
        check_resolution("ResNet", resolution, GENERATOR_STAGES)
        widths = [width * m for m in GENERATOR_STAGES[resolution]]
        self.num_classes = num_classes
        self.latent_shape = (latent_dim,)
        self.seed = _xavier(nn.Linear(latent_dim, widths[0] * 4 * 4))
        self.blocks = ConditionalSequential(
            *(UpBlock(cin, cout, num_classes) for cin, cout in pairwise(widths))
        )
        self.out = ConditionalSequential(
            batch_norm(widths[-1], num_classes),
            nn.ReLU(True),
            _conv3(widths[-1], channels, gain=1.0),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        require_labels(self, self.num_classes, y)
        h = self.seed(z.reshape(z.shape[0], -1)).view(z.shape[0], -1, 4, 4)
        return self.out(self.blocks(h, y), y)


class ResNetDiscriminator(nn.Module):
    """SNGAN's ResNet critic: residual blocks, ReLU, global sum pooling, linear to a logit.

    ``spectral`` normalises every convolution and linear layer. ``dropout`` follows each
    block after the first, as in CT-GAN's ResNet critic. The pooled activations the linear
    layer reads are returned as ``features``.

    With ``num_classes`` > 0, ``condition`` says how D reads the labels from those pooled
    activations: ``"projection"`` adds their dot product with a class embedding to the logit
    (Miyato & Koyama 2018; the embedding is spectrally normalised with ``spectral``);
    ``"auxiliary"`` adds a linear classifier whose ``class_logits`` serve the ``acgan`` loss
    (Odena et al. 2017). With 0 it is ignored.
    """

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        width: int = 64,
        spectral: bool = True,
        dropout: float = 0.0,
        condition: Condition = "projection",
    ):
        super().__init__()
        check_condition(condition)
        check_resolution("ResNet", resolution, CRITIC_STAGES)
        (first, _), *rest = CRITIC_STAGES[resolution]
        blocks: list[nn.Module] = [OptimizedBlock(channels, width * first)]
        cin = width * first
        for multiple, downsample in rest:
            blocks += [DownBlock(cin, width * multiple, downsample), *dropout_layers(dropout)]
            cin = width * multiple
        self.blocks = nn.Sequential(*blocks)
        self.head = _xavier(nn.Linear(cin, 1))
        self.conditioning = CriticConditioning(condition, cin, num_classes) if num_classes else None
        if spectral:
            spectral_norm_all(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> CriticOutput:
        features = torch.relu(self.blocks(x)).sum(dim=(2, 3))
        return critic_output(features, self.head, self.conditioning, y)


@hookimpl
def ganforge_register_generators(register):
    register("resnet", ResNetGenerator, conditional=True)


@hookimpl
def ganforge_register_discriminators(register):
    register("resnet", ResNetDiscriminator, conditional=True)
