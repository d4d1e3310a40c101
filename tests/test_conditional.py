"""Class-conditional built-ins: conditional batch norm in G, projection and auxiliary-classifier
critics, the ACGAN loss, unconditional models left exactly as they were, and conditional runs."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import ganforge.builder
from ganforge.components import CriticOutput
from ganforge.errors import GanforgeError, RecipeError
from ganforge.plugins import Plugins
from ganforge_plugins._layers import ConditionalBatchNorm2d
from ganforge_plugins.dcgan import DCGANDiscriminator, DCGANGenerator
from ganforge_plugins.resnet import ResNetDiscriminator, ResNetGenerator

CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def fingerprint(build, input_shape) -> tuple[str, float, float]:
    """State-dict layout (names and shapes), a position-weighted sum of its tensors, and the sum
    of one train-mode output, for a model built and fed from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    model = build()
    state = model.state_dict()
    layout = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    weights = sum((i + 1) * v.double().sum().item() for i, v in enumerate(state.values()))
    out = model(torch.randn(input_shape))
    if isinstance(out, CriticOutput):
        out = out.logits + out.features.sum(1)
    return hashlib.sha256(layout.encode()).hexdigest()[:16], weights, out.double().sum().item()


# Recorded with the models as they were before they could condition on labels: checkpoints,
# exports and tuned recipes of unconditional runs rely on the same parameters, initial weights
# (for a seed) and forward pass.
UNCONDITIONAL = {
    "dcgan-g": (
        lambda: DCGANGenerator(resolution=32, channels=1, width=8, latent_dim=16),
        (4, 16),
        ("36c39762448008ba", 768.425147583429, 22.779501444849302),
    ),
    "dcgan-d-batch": (
        lambda: DCGANDiscriminator(resolution=32, channels=1, width=8),
        (4, 1, 32, 32),
        ("91b048a008c651ab", 802.5175397343519, 2626.2744750976562),
    ),
    "dcgan-d-spectral": (
        lambda: DCGANDiscriminator(resolution=32, channels=1, width=8, norm="spectral"),
        (4, 1, 32, 32),
        ("4bf7d873871992c3", 16.263862359820905, 352.2952575683594),
    ),
    "resnet-g": (
        lambda: ResNetGenerator(resolution=32, channels=3, width=4, latent_dim=16),
        (4, 16),
        ("1359a86f829d2eb2", 6925.8633185968465, -434.9685144456744),
    ),
    "resnet-d": (
        lambda: ResNetDiscriminator(resolution=32, channels=3, width=4),
        (4, 3, 32, 32),
        ("bdb7bf78cc1d39a2", 150.18958362705598, 812.1328887939453),
    ),
}


@pytest.mark.parametrize("name", sorted(UNCONDITIONAL))
def test_unconditional_models_are_unchanged(name):
    build, input_shape, (layout, weights, output) = UNCONDITIONAL[name]
    got_layout, got_weights, got_output = fingerprint(build, input_shape)
    assert got_layout == layout
    # Float32 tolerances: the random draws are the same everywhere, but spectral norm's power
    # iteration and the forward pass round differently across CPUs, BLAS kernels and thread
    # counts (seen: 9e-8 relative). Any change to a layer, its init or its order moves these
    # sums by far more.
    assert got_weights == pytest.approx(weights, rel=1e-6)
    assert got_output == pytest.approx(output, rel=1e-5)


def test_conditional_batch_norm_scales_and_shifts_per_class():
    torch.manual_seed(0)
    layer = ConditionalBatchNorm2d(4, CLASSES)
    x = torch.randn(6, 4, 5, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    normalised = F.batch_norm(x, None, None, training=True)
    assert torch.allclose(layer(x, y), normalised, atol=1e-6)  # starts as plain batch norm
    with torch.no_grad():
        layer.scale.weight.normal_()
        layer.shift.weight.normal_()
    scale, shift = layer.scale.weight[y, :, None, None], layer.shift.weight[y, :, None, None]
    assert torch.allclose(layer(x, y), normalised * scale + shift, atol=1e-5)
    other = layer(x, (y + 1) % CLASSES)
    assert not torch.allclose(layer(x, y), other)
    with pytest.raises(ValueError, match="needs labels y"):
        layer(x, None)


GENERATORS = {
    "dcgan": lambda: DCGANGenerator(resolution=16, channels=3, num_classes=CLASSES, width=4),
    "resnet": lambda: ResNetGenerator(resolution=32, channels=3, num_classes=CLASSES, width=4),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_a_conditional_generator_draws_by_class_and_needs_labels(name):
    torch.manual_seed(0)
    G = GENERATORS[name]()
    norms = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert norms and not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in G.modules())
    assert all(m.scale.weight.shape[0] == CLASSES for m in norms)
    with torch.no_grad():  # distinct per-class parameters, as training makes them
        for m in norms:
            m.scale.weight.normal_(1.0, 0.5)
    G.eval()  # running statistics: a sample does not depend on its batch
    z = torch.randn(1, *G.latent_shape).repeat(CLASSES, 1)
    images = G(z, torch.arange(CLASSES))
    assert images.shape[0] == CLASSES and images.abs().max() <= 1
    assert not torch.allclose(images[0], images[1]) and not torch.allclose(images[1], images[2])
    assert torch.allclose(G(z[:1], torch.tensor([1])), images[1:2], atol=1e-5)
    with pytest.raises(ValueError, match=f"built for {CLASSES} classes and needs labels y"):
        G(z)


def projection_weight(D) -> torch.Tensor:
    """The projection embedding's trainable weight (the original, under spectral norm)."""
    embed = D.conditioning.embed
    if parametrize.is_parametrized(embed, "weight"):
        return embed.parametrizations.weight.original
    return embed.weight


CRITICS = {
    "dcgan-batch": lambda **kw: DCGANDiscriminator(resolution=16, channels=3, width=4, **kw),
    "dcgan-spectral": lambda **kw: DCGANDiscriminator(
        resolution=16, channels=3, width=4, norm="spectral", **kw
    ),
    "resnet": lambda **kw: ResNetDiscriminator(resolution=32, channels=3, width=4, **kw),
    "resnet-nosn": lambda **kw: ResNetDiscriminator(
        resolution=32, channels=3, width=4, spectral=False, **kw
    ),
}


def critic_input(name: str) -> torch.Tensor:
    size = 32 if name.startswith("resnet") else 16
    return torch.randn(4, 3, size, size)


@pytest.mark.parametrize("name", sorted(CRITICS))
def test_a_projection_critic_scores_by_class_and_learns_its_embedding(name):
    torch.manual_seed(0)
    D = CRITICS[name](num_classes=CLASSES)
    spectral = name != "resnet-nosn" and name != "dcgan-batch"
    assert parametrize.is_parametrized(D.conditioning.embed, "weight") == spectral
    x, y = critic_input(name), torch.tensor([0, 0, 1, 1])
    with torch.no_grad(), parametrize.cached():  # one spectral-norm weight for both passes
        D.eval()  # batch norm on running statistics: the passes differ only in labels
        assert not torch.allclose(D(x, y).logits, D(x, y + 1).logits)
        D.train()
    out = D(x, y)
    assert out.logits.shape == (4, 1) and out.class_logits is None
    out.logits.sum().backward()
    grad = projection_weight(D).grad
    assert grad is not None and grad.abs().sum() > 0
    if not spectral:  # only the rows of the classes present receive a gradient
        assert grad[2].abs().sum() == 0 and grad[:2].abs().sum(1).min() > 0
    with pytest.raises(ValueError, match="needs labels y"):
        D(x)


def test_the_projection_is_the_dot_product_of_embedding_and_pooled_features():
    torch.manual_seed(0)
    D = DCGANDiscriminator(resolution=16, channels=3, width=4, norm="none", num_classes=CLASSES)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        hidden = D.net[:-1](x)  # the 4×4 map the last convolution reads
        unconditional = D.net[-1](hidden).flatten(1)
        projection = (D.conditioning.embed.weight[y] * hidden.sum(dim=(2, 3))).sum(1)
        out = D(x, y)
    assert torch.allclose(out.logits, unconditional + projection[:, None], atol=1e-5)
    assert torch.equal(out.features, hidden.flatten(1))


@pytest.mark.parametrize("name", sorted(CRITICS))
def test_an_auxiliary_critic_classifies_and_ignores_labels_in_its_logit(name):
    torch.manual_seed(0)
    D = CRITICS[name](num_classes=CLASSES, condition="auxiliary")
    assert not hasattr(D.conditioning, "embed")
    x = critic_input(name)
    with torch.no_grad(), parametrize.cached():
        D.eval()
        with_labels, without = D(x, torch.tensor([0, 1, 2, 0])), D(x)
    assert with_labels.class_logits.shape == (4, CLASSES)
    assert torch.equal(with_labels.logits, without.logits)
    assert torch.equal(with_labels.class_logits, without.class_logits)


@pytest.mark.parametrize("num_classes", [0, CLASSES])
@pytest.mark.parametrize("factory", [DCGANDiscriminator, ResNetDiscriminator])
def test_an_unknown_condition_is_rejected_even_unconditionally(factory, num_classes):
    with pytest.raises(ValueError, match="condition must be 'projection' or 'auxiliary'"):
        factory(resolution=32, channels=3, num_classes=num_classes, condition="concat")


def test_the_built_in_models_and_acgan_are_registered_as_conditional():
    registry = Plugins().registry
    for kind in ("generator", "discriminator"):
        for name in ("dcgan", "resnet"):
            assert registry.get(kind, name).conditional
    assert registry.get("loss", "acgan").conditional


# ------------------------------------------------------------------------------- ACGAN loss


def cross_entropy(logits: list[float], label: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


REAL, FAKE = [2.0, -1.0], [0.5, -3.0]
CLASS_REAL, Y_REAL = [[1.0, 0.0, -1.0], [0.2, 0.3, 2.0]], [0, 2]
CLASS_FAKE, Y_FAKE = [[0.0, 1.5, 0.5], [-1.0, 0.0, 1.0]], [1, 0]


def acgan(**options):
    return Plugins().registry.build("loss", "acgan", {}, options)


def acgan_outputs(dtype=torch.float32) -> tuple[CriticOutput, CriticOutput]:
    return tuple(
        CriticOutput(torch.tensor(logits, dtype=dtype), torch.tensor(classes, dtype=dtype))
        for logits, classes in ((REAL, CLASS_REAL), (FAKE, CLASS_FAKE))
    )


def test_acgan_adds_weighted_class_cross_entropy_to_its_adversarial_loss():
    loss = acgan(adversarial="hinge", class_weight=0.5)
    assert loss.needs_real_for_g is False
    real, fake = acgan_outputs()
    y_real, y_fake = torch.tensor(Y_REAL), torch.tensor(Y_FAKE)

    def mean_ce(classes, labels) -> float:
        return sum(map(cross_entropy, classes, labels)) / len(labels)

    ce_real, ce_fake = mean_ce(CLASS_REAL, Y_REAL), mean_ce(CLASS_FAKE, Y_FAKE)
    hinge_d = sum(max(1 - r, 0) for r in REAL) / 2 + sum(max(1 + f, 0) for f in FAKE) / 2
    hinge_g = -sum(FAKE) / 2
    d = loss.d_loss(real, fake, y_real, y_fake)
    g = loss.g_loss(fake, None, y_real, y_fake)
    assert d.item() == pytest.approx(hinge_d + 0.5 * (ce_real + ce_fake), rel=1e-6)
    assert g.item() == pytest.approx(hinge_g + 0.5 * ce_fake, rel=1e-6)


def test_acgan_reduces_in_float32_for_low_precision_logits():
    real, fake = acgan_outputs(torch.bfloat16)
    y_real, y_fake = torch.tensor(Y_REAL), torch.tensor(Y_FAKE)
    loss = acgan()
    assert loss.d_loss(real, fake, y_real, y_fake).dtype == torch.float32
    assert loss.g_loss(fake, None, y_real, y_fake).dtype == torch.float32


def test_acgan_without_class_logits_or_labels_names_the_fix():
    loss = acgan()
    real, fake = acgan_outputs()
    y = torch.tensor(Y_REAL)
    no_classes = CriticOutput(fake.logits)
    with pytest.raises(GanforgeError, match='discriminator.condition = "auxiliary"'):
        loss.d_loss(real, no_classes, y, y)
    with pytest.raises(GanforgeError, match='discriminator.condition = "auxiliary"'):
        loss.g_loss(no_classes, None, y, y)
    with pytest.raises(GanforgeError, match="data.conditional = true"):
        loss.d_loss(real, fake, None, None)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"adversarial": "rahinge"}, "adversarial must be one of 'bce', .*'hinge', not 'rahinge'"),
        ({"class_weight": -1.0}, "class_weight must be >= 0"),
    ],
)
def test_acgan_rejects_bad_options(options, message):
    with pytest.raises(RecipeError, match=f"loss: loss 'acgan' rejected its options: {message}"):
        acgan(**options)


# ------------------------------------------------------------------------------ through the core

CONDITIONAL = ("data.num_classes=3", "data.conditional=true", "train.steps=1")


def label_parameters(model) -> dict[str, torch.Tensor]:
    """The parameters only a conditional model has: per-class norms, the critic's label head."""
    keys = (".scale.", ".shift.", "conditioning.")
    return {n: p.detach().clone() for n, p in model.named_parameters() if any(k in n for k in keys)}


@pytest.mark.parametrize(
    "overrides",
    [
        ("discriminator.norm=spectral", "loss.name=hinge"),
        (
            "generator.name=resnet",
            "discriminator.name=resnet",
            "data.resolution=32",
            "discriminator.condition=auxiliary",
            "loss.name=acgan",
            "loss.adversarial=hinge",
        ),
    ],
    ids=["dcgan-projection", "resnet-acgan"],
)
def test_a_conditional_run_trains_every_label_parameter(tiny, overrides):
    trainer = tiny(*CONDITIONAL, *overrides)
    before = {model: label_parameters(model) for model in (trainer.G, trainer.D)}
    trainer.train_step(0)
    assert trainer.progress.skipped.item() == 0
    for model, params in before.items():
        assert params  # the run built conditional models
        after = label_parameters(model)
        assert all(not torch.equal(after[n], v) for n, v in params.items())


def test_acgan_in_an_unconditional_run_is_a_recipe_error(tiny):
    with pytest.raises(RecipeError, match="loss.name: loss 'acgan' needs class labels"):
        tiny("loss.name=acgan", "train.steps=1")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("loss.name=acgan",), 'returned none: set discriminator.condition = "auxiliary"'),
        (("discriminator.condition=auxiliary",), "has a class head that loss 'bce' does not train"),
    ],
    ids=["acgan without a class head", "a class head without acgan"],
)
def test_a_class_head_and_its_loss_must_come_together(tiny, overrides, message):
    # Caught before training: an untrained head would also stop a multi-process run in DDP.
    with pytest.raises(RecipeError, match=message):
        tiny(*CONDITIONAL, *overrides)


def test_checking_the_class_head_changes_no_state(tiny, monkeypatch):
    overrides = (*CONDITIONAL, "discriminator.norm=spectral", "discriminator.condition=auxiliary")
    overrides += ("loss.name=acgan",)
    checked = tiny(*overrides).discriminator.state_dict()
    monkeypatch.setattr(ganforge.builder, "_check_class_head", lambda *args: None)
    unchecked = tiny(*overrides).discriminator.state_dict()
    assert checked.keys() == unchecked.keys()
    assert all(torch.equal(checked[k], unchecked[k]) for k in checked)


def test_a_misspelt_condition_is_a_recipe_error(tiny):
    with pytest.raises(RecipeError, match="discriminator.condition"):
        tiny("discriminator.condition=projecton")
