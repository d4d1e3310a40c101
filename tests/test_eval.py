"""``ganforge eval`` and evaluation during training: defaults per data, the real ceiling,
plugins adding metrics and extractors, no effect on training, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ganforge
from ganforge.cli import main
from ganforge.trainer import read_metrics

TOY = (
    "data={name='toy2d', dataset='8gaussians', size=512}",
    "generator={name='mlp', hidden=16}",
    "discriminator={name='mlp', hidden=16}",
    "train.batch_size=32",
)


def test_eval_scores_a_digits_generator_beside_the_real_ceiling(
    tmp_path, tiny, digits_classifier, capsys
):
    trainer = tiny(
        "data={name='digits'}",
        "data.resolution=32",
        "train.steps=2",
        "generator.latent_dim=8",
    )
    export = trainer.fit()
    assert main(["eval", str(export), "--data", "digits", "--num", "200", "--out", "r.json"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    generated, real = result["metrics"]["generated"], result["metrics"]["real (held out)"]
    assert {"fd", "kid", "kid/std", "pr/precision", "pr/recall", "is", "is/std"} <= set(generated)
    assert result["extractor"].startswith("digits-cnn-v1-") and result["num"] == 200
    # Two steps of training are far from the data; held-out real digits are close to it.
    assert real["fd"] < generated["fd"] / 5 and real["is"] > 2 * generated["is"]
    assert real["is"] > 4  # recognisable classes (IS over splits of 20 is biased low)
    out = capsys.readouterr().out
    assert "real (held out)" in out and "fd" in out
    # Each number says what it is and which way is better (KID's unit too), in the JSON too.
    lines = out.split("\n\n", 1)[1].splitlines()
    legend = dict(line.split(None, 1) for line in lines if line and not line.startswith("ganf"))
    assert set(legend) == set(generated)
    assert "lower is better" in legend["fd"] and "higher is better" in legend["pr/recall"]
    assert "not ×1000" in legend["kid"] and legend == result["legend"]
    # The same again reads the cached real features and gives the same numbers.
    assert main(["eval", str(export), "--data", "digits", "--num", "200", "--out", "s.json"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["metrics"] == result["metrics"]


def test_eval_of_point_data_uses_the_points_and_the_mode_metric(tmp_path, tiny):
    from conftest import tiny_tables
    from ganforge.recipe import dump_toml, validate

    trainer = tiny(*TOY, "train.steps=2")
    export = trainer.fit()
    recipe = tmp_path / "toy.toml"
    recipe.write_text(dump_toml(validate(tiny_tables(tmp_path, *TOY), None).tables))
    assert (
        main(["eval", str(export), "--data", str(recipe), "--num", "200", "--out", "t.json"]) == 0
    )
    metrics = json.loads((tmp_path / "t.json").read_text())["metrics"]
    assert metrics["real (held out)"]["toy2d/modes"] == 8
    assert metrics["real (held out)"]["toy2d/high_quality"] > 0.95
    assert "is" not in metrics["generated"]  # points have no classifier head


def generator_state(trainer):
    return {k: v.clone() for k, v in trainer.generator.state_dict().items()}


def test_evaluating_during_training_logs_metrics_and_changes_nothing(tmp_path, tiny):
    evaluated = tiny(*TOY, "train.steps=4", "eval.every=2", "eval.num=64")
    evaluated.fit()
    records = [r for r in read_metrics(evaluated.run_dir) if "eval/fd" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert {"eval/toy2d/modes", "eval/kid", "eval/pr/recall"} <= set(records[0])
    plain = tiny(*TOY, "train.steps=4", f"run.out_dir={tmp_path / 'plain'}")
    plain.fit()
    state, expected = generator_state(evaluated), generator_state(plain)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


class MeanGap:
    """Distance between the feature means (a third-party metric)."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, real, fake, context):
        return {"": self.scale * float((real.features.mean(0) - fake.features.mean(0)).norm())}


class Radius(nn.Module):
    """Distance from the origin, as a one-dimensional feature (a third-party extractor)."""

    fingerprint = "radius-v1"
    num_classes = 0

    def forward(self, x):
        return x.norm(dim=1, keepdim=True), None


class EvalPlugin:
    @ganforge.hookimpl
    def ganforge_register_metrics(self, register):
        register("mean_gap", MeanGap)

    @ganforge.hookimpl
    def ganforge_register_feature_extractors(self, register):
        register("radius", Radius)


def test_plugins_add_metrics_and_extractors(tiny):
    trainer = tiny(
        *TOY,
        "train.steps=1",
        "eval.every=1",
        "eval.num=32",
        "eval.extractor=radius",
        "eval.metrics.mean_gap.scale=2.0",
        extra=[("evalplugin", EvalPlugin())],
    )
    trainer.fit()
    record = [r for r in read_metrics(trainer.run_dir) if "eval/mean_gap" in r][0]
    assert set(record) == {"step", "eval/mean_gap"} and record["eval/mean_gap"] > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.metrics.fid={}"], "unknown metric 'fid'; did you mean 'fd'?"),
        (["eval.extractor=inceptoin"], "did you mean 'inception'?"),
        (["eval.metrics.kid.subset=3"], "unknown option of metric 'kid'"),
        (["eval.num=5"], "eval.num: must be >= 10"),
    ],
)
def test_eval_recipe_mistakes_are_found_before_training(overrides, message, tiny):
    from ganforge.errors import RecipeError

    with pytest.raises(RecipeError, match=message.replace("?", r"\?").replace("(", r"\(")):
        tiny(*overrides)


def test_eval_command_mistakes_exit_2(tiny, capsys, monkeypatch, tmp_path):
    export = tiny("train.steps=1").fit()  # synthetic 16 px images: the default is inception
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cases = [
        (["--data", "synthetic", "--num", "20"], "FID Inception weights"),
        (["--data", "synthetic", "--num", "5"], "--num must be at least 10"),
        (["--data", "synthetic", "--metric", "nope"], "unknown metric 'nope'"),
        (["--data", "toy2d", "--num", "20"], "cannot give what the generator makes"),
    ]
    for args, message in cases:
        assert main(["eval", str(export), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)


def test_preparing_an_evaluation_leaves_the_random_streams_alone(digits_classifier):
    # Extractors initialise weights when built: a resumed run with [eval] must draw the same
    # random numbers as one without.
    from ganforge.evaluation import prepare
    from ganforge.plugins import Plugins
    from ganforge_plugins.digits import digits_source

    source = digits_source(resolution=32)
    before = torch.get_rng_state()
    evaluation = prepare(
        Plugins().registry, source.load(), source.fingerprint, source.metadata, num=50
    )
    assert torch.equal(torch.get_rng_state(), before)
    assert set(evaluation.metrics) == {"fd", "kid", "pr", "is"}  # the digits' defaults


class ThreeClassProbe(nn.Module):
    """A fixed random linear 'classifier' with the synthetic data's 3 classes."""

    fingerprint = "probe-v1"
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 16 * 16, 3)

    def forward(self, x):
        features = x.flatten(1)
        return features[:, :32], self.linear(features)


class ProbePlugin:
    @ganforge.hookimpl
    def ganforge_register_feature_extractors(self, register):
        register("probe", ThreeClassProbe)


def test_conditional_runs_evaluate_per_class_with_their_labels(tiny):
    from test_export import ConditionalPlugin

    extra = [("tinyc", ConditionalPlugin()), ("probe", ProbePlugin())]
    trainer = tiny(
        "data.num_classes=3",
        "data.size=96",
        "data.conditional=true",
        "generator.name=tinyc",
        "discriminator.name=tinyc",
        "train.steps=2",
        "eval.every=2",
        "eval.num=48",
        "eval.extractor=probe",
        extra=extra,
    )
    seen = []
    trainer.generator.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    trainer.parts.ema = None  # sample the hooked generator itself
    trainer.fit()
    record = [r for r in read_metrics(trainer.run_dir) if "eval/fd" in r][0]
    assert {"eval/intra_fd", "eval/intra_fd/classes", "eval/accuracy", "eval/is"} <= set(record)
    assert record["eval/intra_fd/classes"] == 3 and 0 <= record["eval/accuracy"] <= 1
    labels = torch.cat([y for y in seen if y is not None and len(y) != 8])  # eval batches
    assert set(labels.tolist()) == {0, 1, 2}
