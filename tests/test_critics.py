"""Several critics trained together ([critics.NAME]): each with its own weight, loss,
optimizer settings and regularizers, all updated in the D phase of the same step; feature
matching over their per-layer features; the 1-D toy (periodic signals, a multi-period and a
multi-scale critic); exact resume; the recipe's mistakes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from launch_worker import CRITICS

from conftest import make_trainer, tiny_tables
from ganforge.components import CriticOutput
from ganforge.critics import CriticSet
from ganforge.errors import PluginError, RecipeError
from ganforge.plugins import Plugins
from ganforge.recipe import apply_overrides, validate
from ganforge.runfiles import read_metrics
from ganforge_plugins.signals import dominant_period, make_signals
from ganforge_plugins.terms import FeatureMatching

#: The 1-D toy at test size (the two-process tests' recipe): a period critic (the
#: [discriminator]) and a scale critic with its own weight, lr and betas, and R1; LSGAN;
#: feature matching over both critics.
SIGNALS = CRITICS


def members(trainer) -> dict[str, dict[str, torch.Tensor]]:
    """Each critic's parameters, copied."""
    return {
        name: {k: v.detach().clone() for k, v in critic.named_parameters()}
        for name, critic in trainer.discriminator.members.items()
    }


def test_the_signals_data_has_the_periods_it_names():
    signals, which = make_signals(300, 64, [4, 8, 16], np.random.default_rng(0))
    assert signals.shape == (300, 64) and signals.dtype == np.float32
    assert np.abs(signals).max() <= 1.1
    np.testing.assert_allclose(dominant_period(signals), np.array([4, 8, 16])[which])


def test_two_critics_train_together_each_with_its_own_settings(tmp_path):
    trainer = make_trainer(tmp_path, *SIGNALS)
    D = trainer.discriminator
    assert isinstance(D, CriticSet) and list(D.members) == ["discriminator", "scale"]
    # One parameter group per critic: the scale critic's own lr and betas.
    groups = trainer.execution.param_groups("discriminator")
    assert [g["lr"] for g in groups] == [pytest.approx(2e-4), pytest.approx(1e-3)]
    assert groups[1]["betas"] == (0.0, 0.9) and groups[0]["betas"] != (0.0, 0.9)
    before = members(trainer)
    g_before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    trainer.fit()
    after = members(trainer)
    # Every critic received gradient and was updated in the same D phase; so was G.
    for name in before:
        assert any(not torch.equal(before[name][k], after[name][k]) for k in before[name]), name
    assert any(not torch.equal(v, trainer.generator.state_dict()[k]) for k, v in g_before.items())
    record = read_metrics(trainer.run_dir)[-1]
    for key in (
        "d_loss/discriminator",
        "d_loss/scale",
        "g_loss/discriminator",
        "g_loss/scale",
        "reg/critics.scale.r1",
        "reg/feature_matching",
    ):
        assert np.isfinite(record[key]) and record[key] > 0, key
    # D's loss is each critic's, weighed (1 and 0.5), plus R1 on the scale critic.
    expected = record["d_loss/discriminator"] + 0.5 * record["d_loss/scale"]
    assert record["d_loss"] == pytest.approx(expected + record["reg/critics.scale.r1"], rel=1e-5)


def test_a_critic_weighed_zero_gets_no_gradient_and_the_others_do(tmp_path):
    weightless = (
        SIGNALS[3]
        .replace("weight=0.5", "weight=0.0")
        .replace(", regularizers={r1={gamma=1.0}}", "")
    )
    overrides = [weightless if o.startswith("critics.scale") else o for o in SIGNALS]
    overrides = [o for o in overrides if not o.startswith("regularizers.feature")]
    trainer = make_trainer(tmp_path, *overrides)
    before = members(trainer)
    trainer.fit()
    after = members(trainer)
    changed = {
        name: any(not torch.equal(before[name][k], after[name][k]) for k in before[name])
        for name in before
    }
    assert changed == {"discriminator": True, "scale": False}


def test_feature_matching_compares_every_layer_of_every_critic():
    """Zero when the fakes' features are the reals', otherwise the mean absolute difference
    averaged per layer and summed; a critic without features is a clear error."""
    real = [
        CriticOutput(torch.zeros(2), features=[torch.ones(2, 3), torch.zeros(2, 4)]),
        CriticOutput(torch.zeros(2), features=[torch.full((2, 5), 2.0)]),
    ]
    shifted = [CriticOutput(o.logits, None, [f + 1 for f in o.features]) for o in real]

    class Ctx:
        outputs = {"fake": shifted, "real": real}

    term, logs = FeatureMatching(weight=2.0)(Ctx)
    assert float(term) == pytest.approx(2.0 * 3)  # three layers, each off by 1
    Ctx.outputs = {"fake": real, "real": real}
    assert float(FeatureMatching()(Ctx)[0]) == 0.0
    Ctx.outputs = {"fake": [CriticOutput(torch.zeros(2))], "real": [CriticOutput(torch.zeros(2))]}
    with pytest.raises(PluginError, match="no critic returns features"):
        FeatureMatching()(Ctx)


def test_two_critics_resume_exactly(tmp_path):
    """Interrupted after step 2 and resumed: every critic, its optimizer group and G as an
    uninterrupted run has them."""
    straight = make_trainer(tmp_path / "a", *SIGNALS, "train.steps=4")
    straight.fit()
    first = make_trainer(tmp_path / "b", *SIGNALS, "train.steps=2", "train.checkpoint_every=2")
    first.fit()
    resumed = make_trainer(tmp_path / "b", *SIGNALS, "train.steps=4")
    assert resumed.step == 2
    resumed.fit()
    for role in ("generator", "discriminator"):
        a = straight.execution.model_state(role)
        b = resumed.execution.model_state(role)
        for k in a:
            assert torch.equal(a[k], b[k]), f"{role}.{k}"
    opt_a = straight.execution.optimizer_state("discriminator")
    opt_b = resumed.execution.optimizer_state("discriminator")
    assert [g["lr"] for g in opt_a["param_groups"]] == [g["lr"] for g in opt_b["param_groups"]]
    for index, entry in opt_a["state"].items():
        for k, v in entry.items():
            assert torch.equal(v, opt_b["state"][index][k]), (index, k)


def test_an_lr_schedule_moves_every_critic_alike(tmp_path):
    trainer = make_trainer(
        tmp_path,
        *SIGNALS,
        "optim.discriminator.lr_decay=linear",
        "optim.discriminator.lr_decay_steps=4",
        "train.steps=2",
    )
    trainer.fit()  # the last step trained at step index 1: lr x 0.75
    groups = trainer.execution.param_groups("discriminator")
    assert [g["lr"] for g in groups] == [pytest.approx(1.5e-4), pytest.approx(7.5e-4)]


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("critics.scale.name=nope", "critics.scale.name", "unknown discriminator"),
        ("critics.scale.regularizers.reconstruction.weight=1.0", "reconstruction", "G-phase"),
        ("critics.scale.loss={name='nope'}", "critics.scale.loss.name", "unknown loss"),
        ("critics.scale.optim.lr=-1", "critics.scale.optim.lr", "must be > 0"),
        ("critics.scale.optim.momentum=0.9", "critics.scale.optim.momentum", "unknown key"),
        ("critics.discriminator={name='mlp'}", "critics.discriminator", "other than"),
        ("critics.scale.widht=4", "critics.scale.widht", "unknown option"),
    ],
)
def test_a_critic_table_mistake_names_its_key(tmp_path, override, key, message):
    tables = apply_overrides(tiny_tables(tmp_path, *SIGNALS), [override])
    with pytest.raises(RecipeError) as err:
        validate(tables, Plugins().registry)
    assert key in str(err.value) and message in str(err.value)


def test_one_critic_builds_no_set(tmp_path):
    """Without [critics], D is the [discriminator] itself: checkpoints and the step as before."""
    trainer = make_trainer(tmp_path, *[o for o in SIGNALS if not o.startswith("critics.")])
    assert not isinstance(trainer.discriminator, CriticSet)
    assert len(trainer.execution.param_groups("discriminator")) == 1
