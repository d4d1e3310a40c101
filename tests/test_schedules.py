"""Schedules over the images seen: their shapes, their validation, what a run sets with them
and logs, and that a resumed run continues them exactly."""

from __future__ import annotations

import math
import tomllib

import pytest
import torch

from conftest import tiny_tables
from ganforge.errors import RecipeError
from ganforge.plugins import Plugins
from ganforge.recipe import validate
from ganforge.schedules import Schedule
from ganforge.trainer import read_metrics

#: Every kind of scheduled setting, over 48 images = 6 steps of 8.
SCHEDULED = (
    "train.batch_size=8",
    "train.log_every=1",
    "optim.generator.lr={schedule='cosine', start=2e-4, end=5e-5, kimg=0.048}",
    "optim.discriminator.betas=[0.0, {schedule='linear', start=0.9, end=0.99, kimg=0.048}]",
    "regularizers.r1.gamma={schedule='cosine', start=1.0, end=0.1, kimg=0.048}",
    "ema.half_life_kimg={schedule='cosine', start=0, end=0.5, kimg=0.048}",
    "augment.name=diffaugment",
    "augment.p={schedule='linear', start=0, end=0.5, kimg=0.048}",
)


def r3gan_cosine(nimg, base, final, total):
    """R3GAN's ``cosine_decay_with_warmup`` without warm-up or hold (its training_loop.py)."""
    decay = 0.5 * (1 + math.cos(math.pi * nimg / total))
    value = base + (1 - decay) * (final - base)
    return final if nimg > total else value


@pytest.mark.parametrize("kimg", [0, 1, 250, 500, 999, 1000, 5000])
def test_cosine_follows_r3gans_formula_and_linear_and_constant_their_definitions(kimg):
    cosine = Schedule("cosine", 2e-4, 5e-5, 1000.0)
    assert cosine.at(kimg) == pytest.approx(r3gan_cosine(kimg * 1000, 2e-4, 5e-5, 1e6), rel=1e-12)
    linear = Schedule("linear", 0.9, 0.99, 1000.0)
    assert linear.at(kimg) == pytest.approx(0.9 + 0.09 * min(kimg / 1000, 1.0), rel=1e-12)
    assert Schedule("constant", 3.0, 3.0, 0.0).at(kimg) == 3.0


def check(*overrides):
    plugins = Plugins()
    return validate(tiny_tables_for_check(*overrides), plugins.registry)


def tiny_tables_for_check(*overrides):
    from pathlib import Path

    return tiny_tables(Path("."), *overrides)


def test_a_valid_schedule_is_resolved_with_its_defaults():
    recipe = check("ema.decay={schedule='constant', start=0.99}")
    assert recipe.get("ema.decay") == {
        "schedule": "constant",
        "start": 0.99,
        "end": 0.99,
        "kimg": 0.0,
    }


LR = "optim.generator.lr="


@pytest.mark.parametrize(
    ("override", "where", "message"),
    [
        (LR + "{schedule='cosin', start=1e-4, end=1e-5, kimg=10}", "lr.schedule", "one of"),
        (LR + "{schedule='linear', start=1e-4, kimg=10}", "lr.end", "needs it"),
        (LR + "{schedule='linear', start=1e-4, end=0, kimg=10}", "lr.end", "> 0"),
        (LR + "{schedule='linear', start=1e-4, end=1e-5, kimg=0}", "lr.kimg", "> 0"),
        (LR + "{schedule='linear', start=1e-4, end=1e-5, kimg=1, x=2}", "lr.x", "unknown"),
        (LR + "{schedule='linear', start='a', end=1e-5, kimg=1}", "lr.start", "number"),
        (
            "optim.generator.betas=[0.0, {schedule='linear', start=0.9, end=1.0, kimg=1}]",
            "betas",
            "[0, 1)",
        ),
        ("ema.decay={schedule='linear', start=0.9, end=1.5, kimg=1}", "ema.decay.end", "[0, 1)"),
        ("augment.p={schedule='linear', start=0, end=2, kimg=1}", "augment.p.end", "[0, 1]"),
        ("train.batch_size={schedule='linear', start=8, end=16, kimg=1}", "batch_size", "integer"),
    ],
)
def test_a_bad_schedule_is_one_message_naming_its_key(override, where, message):
    with pytest.raises(RecipeError) as err:
        check(override, "augment.name=diffaugment")
    text = str(err.value)
    assert where in text and message in text


def test_schedules_that_fight_another_setting_are_refused():
    lr = "optim.generator.lr={schedule='linear', start=1e-4, end=1e-5, kimg=1}"
    with pytest.raises(RecipeError, match="lr_decay: lr follows a schedule"):
        check(lr, "optim.generator.lr_decay=linear", "optim.generator.lr_decay_steps=9")
    p = "augment.p={schedule='linear', start=0, end=0.5, kimg=1}"
    with pytest.raises(RecipeError, match="augment.p: follows a schedule"):
        check("augment.name=diffaugment", p, "augment.adaptive=true")


def test_a_regularizer_option_that_is_no_attribute_cannot_be_scheduled(tiny):
    class Opaque:
        phase = "d"

        def __init__(self, *, strength: float = 1.0):
            self._strength = strength

        def __call__(self, ctx):
            return ctx.real.sum() * 0, {}

    from ganforge import hookimpl

    class Extra:
        @hookimpl
        def ganforge_register_regularizers(self, register):
            register("opaque", Opaque)

    with pytest.raises(RecipeError, match="no number attribute 'strength'"):
        tiny(
            "regularizers.opaque.strength={schedule='linear', start=1, end=0, kimg=1}",
            extra=[("opaque", Extra())],
        )


def test_a_run_sets_and_logs_every_scheduled_value(tiny):
    trainer = tiny("train.steps=6", *SCHEDULED)
    trainer.fit()
    records = read_metrics(trainer.run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        kimg = (record["step"] - 1) * 8 / 1000  # images seen before the logged step trained
        expected = {
            "optim.generator.lr": Schedule("cosine", 2e-4, 5e-5, 0.048).at(kimg),
            "optim.discriminator.betas.1": Schedule("linear", 0.9, 0.99, 0.048).at(kimg),
            "regularizers.r1.gamma": Schedule("cosine", 1.0, 0.1, 0.048).at(kimg),
            "ema.half_life_kimg": Schedule("cosine", 0.0, 0.5, 0.048).at(kimg),
            "augment.p": Schedule("linear", 0.0, 0.5, 0.048).at(kimg),
        }
        for key, value in expected.items():
            assert record[f"schedule/{key}"] == pytest.approx(value, rel=1e-9), key
        assert record["lr_g"] == pytest.approx(expected["optim.generator.lr"], rel=1e-9)
        assert record["augment/p"] == pytest.approx(expected["augment.p"], abs=1e-6)
    # What the last step trained with, in the objects that used it.
    last = Schedule("linear", 0.9, 0.99, 0.048).at(0.040)
    assert trainer.execution.param_groups("discriminator")[0]["betas"] == (0.0, last)
    r1 = dict((n, r) for n, _, r in trainer.parts.regularizers)["r1"]
    assert r1.gamma == pytest.approx(Schedule("cosine", 1.0, 0.1, 0.048).at(0.040))
    assert trainer.ema.half_life == pytest.approx(1000 * Schedule("cosine", 0, 0.5, 0.048).at(0.04))


def test_the_saved_recipe_reads_back_with_its_schedules(tiny):
    trainer = tiny("train.steps=1", *SCHEDULED)
    reread = validate(tomllib.loads(trainer.recipe.to_toml()), Plugins().registry)
    assert reread.tables == trainer.recipe.tables


def test_a_resumed_run_continues_its_schedules_exactly(tmp_path, tiny):
    whole = tiny("train.steps=6", f"run.out_dir={tmp_path / 'whole'}", *SCHEDULED)
    whole.fit()
    first = tiny("train.steps=3", "train.checkpoint_every=3", *SCHEDULED)
    first.fit()
    resumed = tiny("train.steps=6", *SCHEDULED)
    assert resumed.step == 3
    resumed.fit()
    for role in ("generator", "discriminator"):
        a = whole.execution.param_groups(role)[0]
        b = resumed.execution.param_groups(role)[0]
        assert (a["lr"], a["betas"]) == (b["lr"], b["betas"])
        for x, y in zip(
            whole.execution.model_state(role).values(),
            resumed.execution.model_state(role).values(),
            strict=True,
        ):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    ema = whole.ema.module.state_dict().values(), resumed.ema.module.state_dict().values()
    for x, y in zip(*ema, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert [r["schedule/regularizers.r1.gamma"] for r in read_metrics(resumed.run_dir)] == [
        r["schedule/regularizers.r1.gamma"] for r in read_metrics(whole.run_dir)
    ]
