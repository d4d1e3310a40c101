"""Learning-rate decay and the generator's EMA: closed forms, skips, and their use in a run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ganforge.averaging import EMA, lr_factor
from ganforge.errors import RecipeError
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
