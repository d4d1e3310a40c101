"""Learning-rate decay, the generator's EMA and its standing batch-norm statistics: closed
forms, skips, and their use in a run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import ganforge
from ganforge.averaging import EMA, lr_factor, standing_statistics, with_standing_statistics
from ganforge.checkpoint import find_checkpoint
from ganforge.cli import main
from ganforge.errors import RecipeError
from ganforge.export import latents
from ganforge.trainer import read_metrics

LINEAR = {"lr_decay": "linear", "lr_decay_start": 10, "lr_decay_steps": 30}


def test_linear_decay_has_its_own_horizon():
    assert lr_factor(5, {"lr_decay": "none"}) == 1.0
    assert [lr_factor(t, LINEAR) for t in (0, 10, 20, 25, 30, 1000)] == [1, 1, 0.5, 0.25, 0, 0]


def test_ema_after_k_updates_equals_its_closed_form():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    history = []
    for t in range(1, 6):
        with torch.no_grad():
            model.weight.add_(torch.full_like(model.weight, float(t)))
        history.append(model.weight.detach().clone())
        ema.update(t, None, list(model.state_dict(keep_vars=True).values()))
    beta, k = 0.9, len(history)
    expected = beta**k * start + sum(
        (1 - beta) * beta ** (k - i) * p for i, p in enumerate(history, start=1)
    )
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_ema_warmup_ramps_the_decay():
    ema = EMA(nn.Linear(1, 1), decay=0.99, warmup_steps=100)
    assert ema.beta(1) == pytest.approx(0.0099)
    assert ema.beta(50) == pytest.approx(0.495)
    assert ema.beta(100) == ema.beta(10_000) == 0.99


def test_a_skipped_step_leaves_the_average_unchanged():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 2))  # moves the batch-norm statistics
    current = list(model.state_dict(keep_vars=True).values())
    ema.update(1, torch.tensor(1.0), current)
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, before[k]), k
    ema.update(2, torch.tensor(0.0), current)
    assert torch.allclose(ema.module[0].weight, (before["0.weight"] + model[0].weight) / 2)
    running = (before["1.running_mean"] + model[1].running_mean) / 2
    assert torch.allclose(ema.module[1].running_mean, running)  # buffers are averaged too
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked  # counters copied


def test_a_run_with_ema_samples_and_exports_the_average(tiny):
    trainer = tiny("ema.decay=0.9", "train.steps=3")
    path = trainer.fit()
    exported = load_file(str(path))
    for name, value in trainer.ema.module.state_dict().items():
        assert torch.equal(exported[name], value)
    assert not torch.equal(exported["net.0.weight"], trainer.generator.state_dict()["net.0.weight"])


def test_a_run_logs_decaying_learning_rates(tiny):
    trainer = tiny(
        "train.steps=4",
        "optim.generator.lr_decay=linear",
        "optim.generator.lr_decay_steps=4",
        "optim.generator.lr=1e-3",
    )
    trainer.fit()
    assert [m["lr_g"] for m in read_metrics(trainer.run_dir)] == pytest.approx(
        [1e-3, 7.5e-4, 5e-4, 2.5e-4]
    )
    assert {m["lr_d"] for m in read_metrics(trainer.run_dir)} == {2e-4}


def test_linear_decay_needs_a_horizon(tiny):
    with pytest.raises(RecipeError, match="lr_decay_steps"):
        tiny("optim.discriminator.lr_decay=linear")


class _BatchNormGenerator(nn.Module):
    """Linear → batch norm → linear → batch norm: a generator's statistics in miniature."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        self.norm = nn.BatchNorm1d(2, momentum=0.3)

    def forward(self, z, y=None):
        return self.norm(self.net(z))


def test_standing_statistics_are_the_plain_average_over_the_passes():
    g = _BatchNormGenerator()
    g(torch.randn(16, 3))  # running statistics of other weights, as an EMA averages them
    drawn = []

    def draw(n, rng):
        drawn.append(torch.randn(n, 3, generator=rng))
        return drawn[-1], None

    standing_statistics(g, draw, batches=3, batch_size=5)
    assert len(drawn) == 3 and all(len(z) == 5 for z in drawn)
    with torch.no_grad():
        hidden = [g.net[0](z) for z in drawn]
    assert torch.allclose(g.net[1].running_mean, torch.stack([h.mean(0) for h in hidden]).mean(0))
    assert torch.allclose(g.net[1].running_var, torch.stack([h.var(0) for h in hidden]).mean(0))
    assert not g.training and int(g.net[1].num_batches_tracked) == 3

    # A fixed stream: the same weights get the same statistics however often they are asked.
    again = _BatchNormGenerator()
    again.load_state_dict(g.state_dict())
    again(torch.randn(16, 3))
    standing_statistics(again, draw, batches=3, batch_size=5)
    assert torch.equal(again.norm.running_var, g.norm.running_var)


def test_with_standing_statistics_puts_the_modules_own_state_back():
    g = _BatchNormGenerator().train()
    g(torch.randn(16, 3))
    before = {k: v.clone() for k, v in g.state_dict().items()}
    draw = lambda n, rng: (torch.randn(n, 3, generator=rng) * 5 + 2, None)  # noqa: E731
    with with_standing_statistics(g, draw, batches=2, batch_size=8) as inside:
        assert inside is g and not g.training
        assert not torch.allclose(g.norm.running_mean, before["norm.running_mean"])
    for k, v in g.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert g.training and g.norm.momentum == 0.3 and g.net[1].momentum == 0.1
    with with_standing_statistics(g, draw, batches=0, batch_size=8):  # 0: as it is, eval mode
        assert not g.training and torch.equal(g.norm.running_var, before["norm.running_var"])


def test_standing_statistics_change_what_a_run_samples_not_how_it_trains(tiny, tmp_path):
    standing = tiny(
        "ema.decay=0.9",
        "ema.standing_stats=2",
        "train.steps=3",
        "train.sample_every=1",  # grids sampled with standing statistics after every step
        f"run.out_dir={tmp_path / 'standing'}",
    )
    plain = tiny("ema.decay=0.9", "train.steps=3", "train.sample_every=1")
    path, plain_path = standing.fit(), plain.fit()

    # Training is untouched: every checkpointed tensor is the same with and without.
    ours, theirs = (find_checkpoint(t.run_dir).tensors("models") for t in (standing, plain))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name

    # The export has the same weights and new batch-norm statistics, and says so.
    exported, before = load_file(str(path)), load_file(str(plain_path))
    stats = [k for k in exported if "running_" in k]
    assert stats and all(not torch.equal(exported[k], before[k]) for k in stats)
    assert all(torch.equal(exported[k], before[k]) for k in exported if k.endswith("weight"))
    generator, info = ganforge.load_generator(path)
    assert info.metadata["standing_stats"] == {"batches": 2, "batch_size": 8}
    assert ganforge.load_generator(plain_path)[1].metadata["standing_stats"] is None

    # Sampling in the run, the export, and an export of the checkpoint all agree.
    z = latents(info, 4, seed=1)
    assert torch.equal(generator(z, None), standing.outputs.generate(z, None))
    assert main(["export", str(standing.run_dir), "--out", "again.safetensors"]) == 0
    again = load_file("again.safetensors")
    assert all(torch.equal(again[k], exported[k]) for k in exported)
    assert main(["export", str(standing.run_dir), "--no-ema", "--out", "g.safetensors"]) == 0
    assert ganforge.load_generator("g.safetensors")[1].metadata["standing_stats"] is None


def test_standing_statistics_need_an_ema(tiny):
    with pytest.raises(RecipeError, match="ema.standing_stats"):
        tiny("ema.standing_stats=4")


def test_a_half_life_in_kimg_gives_stylegans_decay_with_its_rampup():
    """StyleGAN's form: β = 0.5^(images a step / half-life), the half-life at most rampup ×
    the images seen (StyleGAN2: 10 kimg, 0.05); a function of the step, as a resume needs."""
    model = nn.Linear(2, 2)
    ema = EMA(model, 0.0, half_life_images=10_000, rampup=0.05, images_per_step=64)
    assert ema.beta(1) == pytest.approx(0.5 ** (64 / (64 * 0.05)))  # ramping: fast early
    late = 10_000 // (64 * 0.05) + 1  # past the ramp, the half-life itself
    assert ema.beta(int(late) + 10) == pytest.approx(0.5 ** (64 / 10_000))
    # After the half-life's worth of images at a constant β, half the old average is left.
    steady = EMA(model, 0.0, half_life_images=6_400, images_per_step=64)
    assert steady.beta(5) ** 100 == pytest.approx(0.5)


def test_an_ema_half_life_is_validated_and_trains(tiny):
    with pytest.raises(RecipeError, match="ema.half_life_kimg: gives the average's decay"):
        tiny("ema.decay=0.99", "ema.half_life_kimg=1.0")
    with pytest.raises(RecipeError, match="ema.rampup: ramps the half-life up"):
        tiny("ema.rampup=0.05")
    trainer = tiny("ema.half_life_kimg=0.5", "ema.rampup=0.05")
    assert trainer.ema is not None and trainer.ema.images_per_step == 8  # batch 8, n_critic 1
    trainer.fit()
    assert trainer.step == 2
