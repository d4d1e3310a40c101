"""R3GAN's generator and discriminator (Huang et al., "The GAN is dead; long live the GAN! A
Modern GAN Baseline", NeurIPS 2024), in plain PyTorch.

The design is the reference's (brownvc/R3GAN, ``R3GAN/Networks.py``): no normalisation, no
mapping network, no custom CUDA operations.

- Stages of residual blocks: 1×1 expand → biased leaky ReLU → grouped 3×3 (``cardinality``
  groups) → biased leaky ReLU → 1×1 back. The last layer of every block starts at zero (each
  block is the identity at initialisation), the others are scaled by the fix-up rule
  (``gain · L^(-1/4)``, L the number of blocks in the model).
- Resampling by the [1, 2, 1] filter (its [1, 3, 3, 1] interpolation kernel) between stages,
  a 1×1 convolution where the width changes.
- G starts from a learned 4×4 basis scaled per channel by a linear map of the latent and ends
  in a 1×1 convolution to the image (no tanh). D starts with a 1×1 convolution from the image
  and ends in a depthwise 4×4 convolution and a linear head.
- Class-conditional: an embedding of the one-hot label joins the latent in G, and D projects
  its last features onto an embedding of the label.

Widths run from the 4×4 stage up in G (and back down in D). ``preset = "cifar10"`` gives the
reference's CIFAR-10 models (768 channels and 96 groups in each of 4 stages, 2 blocks each:
20,732,160 parameters in G and 20,683,776 in D); otherwise ``width`` (or ``widths``, one per
stage) and ``cardinality`` set the size, for any resolution 4·2^k from 16 to 256.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganforge import hookimpl
from ganforge_plugins._layers import require_labels

#: The leaky ReLU's slope and the gain that keeps a unit's variance through it.
SLOPE = 0.2
GAIN = math.sqrt(2 / (1 + SLOPE**2))
RESOLUTIONS = (16, 32, 64, 128, 256)
#: The reference's presets: widths from 4×4 up, groups per stage, blocks per stage.
PRESETS = {"cifar10": {"widths": [768] * 4, "cardinality": [96] * 4, "blocks": [2] * 4}}


def _msr(layer: nn.Conv2d | nn.Linear, gain: float = 1.0):
    """He-style initialisation with the given gain (zero: the layer starts at zero)."""
    fan_in = layer.weight.shape[1] * layer.weight[0][0].numel()
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _conv(cin: int, cout: int, kernel: int, groups: int = 1, gain: float = 1.0) -> nn.Conv2d:
    return _msr(nn.Conv2d(cin, cout, kernel, 1, (kernel - 1) // 2, groups=groups, bias=False), gain)


class BiasedLeakyReLU(nn.Module):
    """A learned bias per channel, then the leaky ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        return F.leaky_relu(x + self.bias.view(shape), SLOPE)


class ResidualBlock(nn.Module):
    """x + 1×1(act(grouped 3×3(act(1×1 expand(x))))), the last 1×1 zero at initialisation."""

    def __init__(self, channels: int, cardinality: int, expansion: int, blocks_in_model: int):
        super().__init__()
        expanded = channels * expansion
        if expanded % cardinality:
            raise ValueError(
                f"cardinality {cardinality} must divide the {expanded} expanded channels"
            )
        gain = GAIN * blocks_in_model ** (-1 / (2 * 3 - 2))  # fix-up scaling of 3 layers
        self.expand = _conv(channels, expanded, 1, gain=gain)
        self.grouped = _conv(expanded, expanded, 3, groups=cardinality, gain=gain)
        self.project = _conv(expanded, channels, 1, gain=0.0)
        self.act1, self.act2 = BiasedLeakyReLU(expanded), BiasedLeakyReLU(expanded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act2(self.grouped(self.act1(self.expand(x)))))


def _lowpass(taps: tuple[int, ...] = (1, 2, 1)) -> torch.Tensor:
    """The 2-D interpolation kernel of ``taps`` (convolved with [1, 1]), summing to 1."""
    row = torch.tensor(
        [a + b for a, b in zip((0, *taps), (*taps, 0), strict=True)], dtype=torch.float64
    )
    kernel = torch.outer(row, row)
    return (kernel / kernel.sum()).float()


class Resample(nn.Module):
    """×2 up (transposed, 4× the kernel) or ÷2 down by the low-pass kernel, per channel; a
    1×1 convolution where the width changes (before going up, after coming down)."""

    def __init__(self, cin: int, cout: int, up: bool):
        super().__init__()
        self.up = up
        self.register_buffer("kernel", _lowpass(), persistent=False)
        self.linear = _conv(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up and self.linear is not None:
            x = self.linear(x)
        n, c, h, w = x.shape
        k = self.kernel.to(x.dtype).view(1, 1, *self.kernel.shape)
        flat = x.reshape(n * c, 1, h, w)
        if self.up:
            y = F.conv_transpose2d(flat, 4 * k, stride=2, padding=1)
        else:
            y = F.conv2d(flat, k, stride=2, padding=1)
        y = y.view(n, c, *y.shape[2:])
        if not self.up and self.linear is not None:
            y = self.linear(y)
        return y


class GenerativeBasis(nn.Module):
    """A learned 4×4 basis per channel, scaled per sample by a linear map of the input."""

    def __init__(self, in_features: int, channels: int):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(channels, 4, 4))
        self.linear = _msr(nn.Linear(in_features, channels, bias=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.basis.unsqueeze(0) * self.linear(z).view(z.shape[0], -1, 1, 1)


class DiscriminativeBasis(nn.Module):
    """A depthwise 4×4 convolution to one value per channel, then a linear head."""

    def __init__(self, channels: int, out_features: int):
        super().__init__()
        self.basis = _msr(nn.Conv2d(channels, channels, 4, groups=channels, bias=False))
        self.linear = _msr(nn.Linear(channels, out_features, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.basis(x).flatten(1))


def _stages(
    resolution: int,
    preset: str | None,
    width: int,
    widths: list[int] | None,
    cardinality: int | list[int] | None,
    blocks: int | list[int],
    expansion: int,
) -> tuple[list[int], list[int], list[int]]:
    """Widths, groups and blocks per stage, from the 4×4 stage up."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"r3gan runs at {', '.join(map(str, RESOLUTIONS))} px, not {resolution}")
    count = int(math.log2(resolution // 4)) + 1
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
        chosen = PRESETS[preset]
        if len(chosen["widths"]) != count:
            raise ValueError(f"preset {preset!r} has {len(chosen['widths'])} stages, not {count}")
        return list(chosen["widths"]), list(chosen["cardinality"]), list(chosen["blocks"])
    widths = list(widths) if widths is not None else [width] * count
    if len(widths) != count:
        raise ValueError(
            f"widths needs {count} values at {resolution} px (4×4 up), not {len(widths)}"
        )

    def per_stage(value, name):
        values = list(value) if isinstance(value, list) else [value] * count
        if len(values) != count or any(v < 1 for v in values):
            raise ValueError(f"{name} needs one positive value or {count} of them")
        return values

    # The reference's groups are 16 expanded channels each (768 × 2 / 96); a width whose
    # expansion 16 does not divide gets the largest count of groups that divides it.
    groups = cardinality
    if cardinality is None:
        groups = [math.gcd(w * expansion, max(w * expansion // 16, 1)) for w in widths]
    return widths, per_stage(groups, "cardinality"), per_stage(blocks, "blocks")


class R3GANGenerator(nn.Module):
    latent_prior = "normal"

    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        latent_dim: int = 64,
        preset: str | None = None,
        width: int = 128,
        widths: list[int] | None = None,
        cardinality: int | list[int] | None = None,
        blocks: int | list[int] = 2,
        expansion: int = 2,
        embedding_dim: int | None = None,
    ):
        super().__init__()
        widths, groups, blocks = _stages(
            resolution, preset, width, widths, cardinality, blocks, expansion
        )
        self.num_classes, self.latent_shape = num_classes, (latent_dim,)
        embed = (embedding_dim or latent_dim) if num_classes else 0
        total = sum(blocks)
        stages = []
        for i, (w, g, b) in enumerate(zip(widths, groups, blocks, strict=True)):
            first = (
                GenerativeBasis(latent_dim + embed, w)
                if i == 0
                else Resample(widths[i - 1], w, up=True)
            )
            stages.append(
                nn.Sequential(first, *(ResidualBlock(w, g, expansion, total) for _ in range(b)))
            )
        self.stages = nn.ModuleList(stages)
        self.to_image = _conv(widths[-1], channels, 1)
        self.embedding = _msr(nn.Linear(num_classes, embed, bias=False)) if num_classes else None

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        require_labels(self, self.num_classes, y)
        if self.embedding is not None:
            onehot = F.one_hot(y, self.num_classes).to(z.dtype)
            z = torch.cat([z, self.embedding(onehot)], dim=1)
        x = z
        for stage in self.stages:
            x = stage(x)
        return self.to_image(x)


class R3GANDiscriminator(nn.Module):
    def __init__(
        self,
        *,
        resolution: int,
        channels: int,
        num_classes: int = 0,
        preset: str | None = None,
        width: int = 128,
        widths: list[int] | None = None,
        cardinality: int | list[int] | None = None,
        blocks: int | list[int] = 2,
        expansion: int = 2,
    ):
        super().__init__()
        widths, groups, blocks = _stages(
            resolution, preset, width, widths, cardinality, blocks, expansion
        )
        # D runs the stages the other way: from the image's resolution down to 4×4.
        widths, groups, blocks = widths[::-1], groups[::-1], blocks[::-1]
        self.num_classes = num_classes
        total = sum(blocks)
        self.from_image = _conv(channels, widths[0], 1)
        stages = []
        # Conditional: the last features are an embedding as wide as the 4×4 stage.
        embed = widths[-1]
        for i, (w, g, b) in enumerate(zip(widths, groups, blocks, strict=True)):
            last = i == len(widths) - 1
            out = (embed if num_classes else 1) if last else widths[i + 1]
            transition = DiscriminativeBasis(w, out) if last else Resample(w, out, up=False)
            stages.append(
                nn.Sequential(
                    *(ResidualBlock(w, g, expansion, total) for _ in range(b)), transition
                )
            )
        self.stages = nn.ModuleList(stages)
        self.embedding = None
        if num_classes:
            self.embedding = _msr(nn.Linear(num_classes, embed, bias=False), 1 / math.sqrt(embed))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        require_labels(self, self.num_classes, y)
        x = self.from_image(x)
        for stage in self.stages:
            x = stage(x)
        if self.embedding is not None:  # projection onto the label's embedding
            x = (x * self.embedding(F.one_hot(y, self.num_classes).to(x.dtype))).sum(1)
        return x.view(x.shape[0])


@hookimpl
def ganforge_register_generators(register):
    register("r3gan", R3GANGenerator, conditional=True)


@hookimpl
def ganforge_register_discriminators(register):
    register("r3gan", R3GANDiscriminator, conditional=True)
