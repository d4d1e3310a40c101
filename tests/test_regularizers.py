"""The built-in regularizers on critics whose input gradients are known in closed form, and in
real runs: lazily, end to end, and under bf16 mixed precision."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest
import torch
from torch import nn

from conftest import run_command
from ganforge.components import CriticOutput, Regularizer, RegularizerContext, as_critic_output
from ganforge.errors import RecipeError
from ganforge.plugins import Plugins
from ganforge.trainer import read_metrics

OPTIONS = {
    "gradient_penalty": {"weight": 10.0, "one_sided": False, "target": 1.0},
    "r1": {"gamma": 10.0},
    "r2": {"gamma": 10.0},
    "consistency": {"weight": 2.0, "feature_weight": 0.1, "margin": 0.0},
}


def build(name: str, **options) -> Regularizer:
    return Plugins().registry.build("regularizer", name, {}, options)


class LinearCritic(nn.Module):
    """D(x) = <w, x>: the input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x, y=None):
        return (x.flatten(1) * self.w).sum(1)


class QuadraticCritic(nn.Module):
    """D(x) = a/2 · ‖x‖²: the input gradient is a·x."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))

    def forward(self, x, y=None):
        return 0.5 * self.a * x.flatten(1).square().sum(1)


class RecordingCritic:
    """``critic(x, y, float32=False)`` as the core hands it over, recording each call."""

    def __init__(self, module: nn.Module):
        self.module, self.calls = module, []

    def __call__(self, x, y, *, float32=False):
        self.calls.append((x.detach().clone(), y, float32))
        return as_critic_output(self.module(x, y))


def context(critic, real, fake=None, y_real=None, y_fake=None):
    """A D-phase context whose fakes come from a generator *with* a graph: a regularizer that
    forgot to detach them would put gradients into the generator."""
    generator = nn.Linear(1, real[0].numel())
    z = torch.ones(len(real), 1)
    if fake is None:
        fake = torch.zeros_like(real)
    fake = generator(z) * 0 + fake.flatten(1)  # the given values, attached to G's graph
    fake = fake.view_as(real)
    return RegularizerContext("d", 0, generator, critic, real, fake, z, y_real, y_fake)


def no_grad_in_generator(ctx: RegularizerContext) -> bool:
    return all(p.grad is None for p in ctx.generator.parameters())


def images(*rows) -> torch.Tensor:
    """A batch of 1×1×2 "images" (non-batch dims are flattened by the penalties)."""
    return torch.tensor(rows).view(len(rows), 1, 1, 2)


# --------------------------------------------------------------------------- registration


def test_regularizers_are_registered_with_their_recipe_options():
    registry = Plugins().registry
    assert set(OPTIONS) <= set(registry.names("regularizer"))
    for name, defaults in OPTIONS.items():
        params = registry.get("regularizer", name).signature().parameters
        assert {k: p.default for k, p in params.items()} == defaults  # `every` is the core's
        regularizer = build(name)
        assert isinstance(regularizer, Regularizer) and regularizer.phase == "d"


@pytest.mark.parametrize(
    "name, option", [("gradient_penalty", "weight"), ("r1", "gamma"), ("consistency", "margin")]
)
def test_a_negative_weight_is_a_recipe_error_naming_it(tiny, name, option):
    with pytest.raises(RecipeError, match=f"regularizers.{name}: .*{option} = -1"):
        build(name, **{option: -1.0})
    with pytest.raises(RecipeError, match=f"{name}.*{option} = -1"):
        tiny(f"regularizers.{name}.{option}=-1.0")


# --------------------------------------------------------------------------- gradient penalty


@pytest.mark.parametrize(
    "w, options, expected",
    [
        ([1.2, 1.6], {}, 10 * (2 - 1) ** 2),  # ‖w‖ = 2
        ([1.2, 1.6], {"target": 0.5, "weight": 3.0}, 3 * (2 - 0.5) ** 2),
        ([1.2, 1.6], {"one_sided": True}, 10 * (2 - 1) ** 2),
        ([0.3, 0.4], {}, 10 * (0.5 - 1) ** 2),  # ‖w‖ = 0.5
        ([0.3, 0.4], {"one_sided": True}, 0.0),
    ],
)
def test_gradient_penalty_of_a_linear_critic(w, options, expected):
    critic = RecordingCritic(LinearCritic(w))
    ctx = context(critic, images([1.0, 2.0], [3.0, -1.0], [0.0, 5.0]))
    term, logs = build("gradient_penalty", **options)(ctx)
    assert term.item() == pytest.approx(expected, rel=1e-6)
    assert logs["grad_norm"].item() == pytest.approx(math.hypot(*w), rel=1e-6)
    assert not logs["grad_norm"].requires_grad
    term.backward()
    # d/dw weight·(‖w‖ - t)² = 2·weight·(‖w‖ - t)·w/‖w‖: the penalty trains D.
    norm, weight = math.hypot(*w), options.get("weight", 10.0)
    excess = norm - options.get("target", 1.0)
    if options.get("one_sided"):
        excess = max(excess, 0.0)
    expected_grad = [2 * weight * excess * wi / norm for wi in w]
    assert critic.module.w.grad.tolist() == pytest.approx(expected_grad, rel=1e-5, abs=1e-7)
    assert no_grad_in_generator(ctx)


def test_gradient_penalty_interpolates_each_sample_between_real_and_fake():
    critic = RecordingCritic(LinearCritic([1.0] * 8))
    real, y = torch.ones(64, 2, 2, 2), torch.arange(64)
    ctx = context(critic, real, torch.zeros_like(real), y_real=y, y_fake=y + 100)
    build("gradient_penalty")(ctx)
    [(x_hat, labels, float32)] = critic.calls
    assert float32 and labels is y  # autocast off; the real labels at the interpolates
    eps = x_hat.flatten(1)
    assert torch.equal(eps, eps[:, :1].expand_as(eps))  # one ε per sample...
    assert eps.min() >= 0 and eps.max() <= 1 and eps[:, 0].unique().numel() == 64  # ...uniform


# --------------------------------------------------------------------------- R1 and R2


def test_r1_of_a_linear_critic_is_half_gamma_times_the_squared_slope():
    critic = RecordingCritic(LinearCritic([1.2, 1.6]))
    ctx = context(critic, images([1.0, 2.0], [3.0, -1.0]))
    term, logs = build("r1", gamma=3.0)(ctx)
    assert term.item() == pytest.approx(3.0 / 2 * 4.0, rel=1e-6)
    assert logs["grad_norm"].item() == pytest.approx(2.0, rel=1e-6)
    term.backward()
    assert critic.module.w.grad.tolist() == pytest.approx([3.0 * 1.2, 3.0 * 1.6], rel=1e-6)


@pytest.mark.parametrize("name", ["r1", "r2"])
def test_r1_penalises_reals_and_r2_fakes(name):
    # D = a/2·‖x‖², ∇ = a·x: the penalty is γ/2·a²·mean ‖x‖² over the penalised batch.
    critic = RecordingCritic(QuadraticCritic())
    real, fake = images([1.0, 2.0], [3.0, -1.0]), images([0.0, 2.0], [1.0, 1.0])
    y_real, y_fake = torch.tensor([0, 1]), torch.tensor([2, 3])
    ctx = context(critic, real, fake, y_real, y_fake)
    term, logs = build(name, gamma=4.0)(ctx)
    penalised, labels = (real, y_real) if name == "r1" else (fake, y_fake)
    squared = [sum(v * v for v in row) for row in penalised.flatten(1).tolist()]
    assert term.item() == pytest.approx(4.0 / 2 * sum(squared) / 2, rel=1e-6)
    expected_norm = sum(math.sqrt(s) for s in squared) / 2
    assert logs["grad_norm"].item() == pytest.approx(expected_norm, rel=1e-6)
    [(x, seen_labels, float32)] = critic.calls
    assert torch.equal(x, penalised) and seen_labels is labels and float32
    term.backward()
    # d/da γ/2·a²·mean‖x‖² = γ·a·mean‖x‖² at a = 1
    assert critic.module.a.grad.item() == pytest.approx(4.0 * sum(squared) / 2, rel=1e-6)
    assert no_grad_in_generator(ctx)


# --------------------------------------------------------------------------- consistency


class ScriptedCritic:
    """Returns the given outputs on successive calls: two passes that differ by design."""

    def __init__(self, *outputs: CriticOutput):
        self.outputs = list(outputs)

    def __call__(self, x, y, *, float32=False):
        return self.outputs.pop(0)


@pytest.mark.parametrize(
    "features, options, expected",
    [
        # per sample: (1 - 0)² + 0.1·mean(1², 1²) = 1.1 and (2 - 2)² + 0.1·mean(2², 0²) = 0.2
        (True, {}, 2.0 * (1.1 + 0.2) / 2),
        (True, {"margin": 0.5, "weight": 1.0}, (0.6 + 0.0) / 2),
        (True, {"feature_weight": 0.0}, 2.0 * (1.0 + 0.0) / 2),
        (False, {}, 2.0 * (1.0 + 0.0) / 2),  # a critic without features: the output term only
    ],
)
def test_consistency_term_follows_the_ct_gan_formula(features, options, expected):
    def output(logits, feats):
        return CriticOutput(
            torch.tensor(logits), features=torch.tensor(feats) if features else None
        )

    critic = ScriptedCritic(
        output([1.0, 2.0], [[0.0, 0.0], [0.0, 0.0]]), output([0.0, 2.0], [[1.0, 1.0], [2.0, 0.0]])
    )
    term, logs = build("consistency", **options)(context(critic, images([0.0, 0.0], [0.0, 0.0])))
    assert term.item() == pytest.approx(expected, rel=1e-6)
    assert logs == {}


class DropoutCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Dropout(0.5))
        self.head = nn.Linear(16, 1)

    def forward(self, x, y=None):
        features = self.body(x.flatten(1))
        return CriticOutput(self.head(features).squeeze(1), features=features)


def test_consistency_is_positive_with_dropout_and_zero_without():
    torch.manual_seed(0)
    module = DropoutCritic()
    ctx = context(RecordingCritic(module), images([1.0, 2.0], [3.0, -1.0], [0.5, 0.5]))
    regularizer = build("consistency")
    term, _ = regularizer(ctx)
    assert term.item() > 0
    term.backward()
    assert module.head.weight.grad.abs().sum() > 0  # the term trains D
    assert no_grad_in_generator(ctx)
    module.eval()
    assert regularizer(ctx)[0].item() == 0.0


# --------------------------------------------------------------------------- in training


def test_gradient_penalty_trains_a_wgan_and_is_logged(tiny):
    trainer = tiny(
        "regularizers.gradient_penalty.weight=10.0",
        "loss.name=wgan",
        "discriminator.norm=none",
        "train.steps=2",
    )
    trainer.fit()
    last = read_metrics(trainer.run_dir)[-1]
    assert last["reg/gradient_penalty"] > 0 and math.isfinite(last["reg/gradient_penalty"])
    assert last["reg/gradient_penalty/grad_norm"] > 0
    assert last["skipped_steps"] == 0


def test_a_lazy_regularizer_runs_every_k_steps(tiny):
    trainer = tiny("regularizers.r1.gamma=1.0", "regularizers.r1.every=2", "train.steps=3")
    name, every, r1 = trainer.parts.regularizers[0]
    assert (name, every) == ("r1", 2)
    steps = []

    class Spy:
        phase = r1.phase

        def __call__(self, ctx):
            steps.append(ctx.step)
            return r1(ctx)

    trainer.parts.regularizers[0] = (name, every, Spy())
    logged = [("r1" in trainer.train_step(step)[0].logs) for step in range(3)]
    assert steps == [0, 2]
    assert logged == [True, False, True]


# --------------------------------------------------------------------------- reuse


def d_phase(trainer, step: int, real, fake):
    """The D loss of one D update as the step builds it, its D gradients and the number of
    critic forwards it took."""
    calls = []
    hook = trainer.D.register_forward_hook(lambda *_: calls.append(1))
    try:
        passes = trainer._critic_passes(step, real, fake, None, None)
        loss = trainer.parts.loss.d_loss(passes["real"][0].out, passes["fake"][0].out, None, None)
        z = torch.zeros(len(real), 1)
        tensors = (real, fake, z, None, None)
        loss, logs = trainer._regularize(loss, tensors, "d", step, passes=passes)
        params = [p for p in trainer.D.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
    finally:
        hook.remove()
    return loss.detach(), grads, len(calls), logs


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_r1_and_r2_on_the_adversarial_passes_equal_their_own_passes(tiny, norm):
    trainer = tiny(
        "loss.name=rsgan",
        "regularizers.r1.gamma=2.0",
        "regularizers.r2.gamma=3.0",
        f"discriminator.norm={norm}",
    )
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(8, 3, 16, 16, generator=generator) * 2 - 1
    fake = torch.rand(8, 3, 16, 16, generator=generator) * 2 - 1
    loss, grads, forwards, logs = d_phase(trainer, 0, real, fake)
    trainer._reuse_passes = False  # each penalty calls the critic itself, as before
    own_loss, own_grads, own_forwards, own_logs = d_phase(trainer, 0, real, fake)
    assert (forwards, own_forwards) == (2, 4)
    torch.testing.assert_close(loss, own_loss, rtol=1e-6, atol=1e-6)
    for name in ("r1", "r2", "r1/grad_norm", "r2/grad_norm"):
        torch.testing.assert_close(logs[name], own_logs[name], rtol=1e-6, atol=1e-6)
    for grad, own in zip(grads, own_grads, strict=True):
        torch.testing.assert_close(grad, own, rtol=1e-6, atol=1e-6)


def test_a_lazy_penalty_reuses_a_pass_only_when_it_is_due(tiny):
    trainer = tiny("regularizers.r1.gamma=1.0", "regularizers.r1.every=2")
    real, fake = torch.rand(2, 8, 3, 16, 16) * 2 - 1
    due = trainer._critic_passes(0, real, fake, None, None)
    assert due["real"][0].x.requires_grad and not due["fake"][0].x.requires_grad
    off = trainer._critic_passes(1, real, fake, None, None)
    assert not off["real"][0].x.requires_grad  # no graph to the inputs on the other steps
    assert d_phase(trainer, 1, real, fake)[2] == 2


# --------------------------------------------------------------------------- bf16
# Accelerate's state is a process-wide singleton fixed at the first Accelerator: a bf16
# Trainer cannot be built in the pytest process once another test made a full-precision one,
# so the bf16 checks run in subprocesses.


def test_r1_under_bf16_mixed_precision_logs_a_finite_penalty(tmp_path):
    out = tmp_path / "run"
    done = run_command(
        [
            sys.executable,
            "-m",
            "ganforge",
            "recipes/quickstart.toml",
            "train.steps=2",
            "generator.width=8",
            "discriminator.width=8",
            "train.batch_size=8",
            "run.mixed_precision=bf16",
            "regularizers.r1.gamma=1.0",
            f"run.out_dir={out}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "mixed precision bf16" in done.stdout
    last = read_metrics(out)[-1]
    assert math.isfinite(last["reg/r1"]) and last["reg/r1"] >= 0
    assert math.isfinite(last["reg/r1/grad_norm"]) and last["skipped_steps"] == 0


BF16_CRITIC = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from torch import nn
    sys.path.insert(0, "tests")
    from conftest import make_trainer
    from ganforge.components import RegularizerContext

    trainer = make_trainer(
        Path(sys.argv[1]), "run.mixed_precision=bf16", "regularizers.r1.gamma=1.0"
    )
    convs = []
    for module in trainer.D.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(lambda m, i, out: convs.append(str(out.dtype)))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    result = {"mixed_precision": trainer.acc.mixed_precision}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trainer.critic(x, None)
        result["plain"], convs[:] = list(convs), []
        out = trainer.critic(x, None, float32=True)
        result["float32"], convs[:] = list(convs), []
        result["logits"] = str(out.logits.dtype)
        from ganforge_plugins.regularizers import R1
        ctx = RegularizerContext("d", 0, trainer.G, trainer.critic, x, x, None, None, None)
        term, _ = R1(gamma=1.0)(ctx)
        result["r1"] = [str(term.dtype), term.item()]
        result["r1_convs"], convs[:] = sorted(set(convs)), []
        # The step's passes with R1 due: the reals' in float32 (R1 differentiates it), the
        # fakes' under autocast.
        passes = {k: v[0] for k, v in trainer._critic_passes(0, x, x.clone(), None, None).items()}
        half = len(convs) // 2
        result["passes"] = [sorted(set(convs[:half])), sorted(set(convs[half:]))]
        result["pass_r1"] = R1(gamma=1.0)(
            RegularizerContext("d", 0, trainer.G, trainer.critic, x, x, None, None, None, passes)
        )[0].item()
    print(json.dumps(result))
    """
)


def test_the_float32_critic_escapes_bf16_autocast(tmp_path):
    done = run_command([sys.executable, "-c", BF16_CRITIC, str(tmp_path / "run")], tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mixed_precision"] == "bf16"
    assert set(result["plain"]) == {"torch.bfloat16"}  # autocast is really on...
    assert set(result["float32"]) == {"torch.float32"}  # ...and float32=True turns it off
    assert result["logits"] == "torch.float32"
    assert result["r1"][0] == "torch.float32" and math.isfinite(result["r1"][1])
    assert result["r1_convs"] == ["torch.float32"]
    assert result["passes"] == [["torch.float32"], ["torch.bfloat16"]]
    assert result["pass_r1"] == pytest.approx(result["r1"][1], rel=1e-5)  # the same penalty
