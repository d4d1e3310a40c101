"""Generators that take an input: the batch's input made from its images, the critic
conditioned on it, weighted terms beside the adversarial one, the critic's start and the
adaptive weight, exports that record the input, ``generate --input`` and pair scores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ganforge import hookimpl
from ganforge.cli import main
from ganforge.errors import GanforgeError, RecipeError
from ganforge.paired import psnr, ssim
from ganforge.recipe import apply_overrides, validate
from ganforge.runfiles import read_metrics
from ganforge.sampling import evaluate_model, write_from_inputs
from ganforge.tomlwriter import dump_toml
from ganforge.trainer import Trainer


class Refiner(nn.Module):
    """Upsamples its input to the output's size and refines it: ``G(z, y, source)``."""

    latent_shape = (0,)
    latent_prior = "normal"

    def __init__(self, *, resolution, channels, num_classes, input_channels, input_resolution):
        super().__init__()
        self.resolution = resolution
        self.body = nn.Conv2d(input_channels, 8, 3, 1, 1)
        self.head = nn.Conv2d(8, channels, 3, 1, 1)
        self.sources: list[torch.Tensor] = []

    @property
    def last_layer(self):
        return self.head.weight

    def forward(self, z, y=None, source=None):
        self.sources.append(source.detach().clone())
        x = F.interpolate(source, size=self.resolution, mode="nearest")
        return torch.tanh(self.head(F.leaky_relu(self.body(x), 0.2)))


class PairCritic(nn.Module):
    """A critic conditioned on the input; counts its calls and keeps what it was given."""

    def __init__(self, *, resolution, channels, num_classes, input_channels=0, input_resolution=0):
        super().__init__()
        self.takes_input = input_channels > 0
        self.net = nn.Conv2d(channels + input_channels, 1, 4, 2, 1)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, y=None, source=None):
        self.calls.append((x.detach().clone(), None if source is None else source.detach().clone()))
        if self.takes_input:
            x = torch.cat([x, F.interpolate(source, size=x.shape[-1], mode="nearest")], 1)
        return self.net(x)


class Watch:
    """A G-phase term that records what its context holds (and adds nothing)."""

    phase = "g"

    def __init__(self):
        self.seen = []

    def __call__(self, ctx):
        self.seen.append((ctx.step, ctx.real.detach(), ctx.source, ctx.fake.detach()))
        return ctx.fake.sum() * 0, {}


class TestPlugin:
    watch = None

    @hookimpl
    def ganforge_register_generators(self, register):
        register("refiner", Refiner)

    @hookimpl
    def ganforge_register_discriminators(self, register):
        register("pair_critic", PairCritic)

    @hookimpl
    def ganforge_register_regularizers(self, register):
        register("watch", lambda: TestPlugin.watch)


#: A 16-px grey run: G gets the 4× box-downscaled image, the critic the same input.
PAIRED = {
    "run": {"name": "paired", "seed": 0, "mixed_precision": "no"},
    "data": {"name": "synthetic", "resolution": 16, "channels": 1, "size": 64},
    "input": {"name": "downscale", "factor": 4},
    "generator": {"name": "refiner"},
    "discriminator": {"name": "pair_critic"},
    "loss": {"name": "hinge"},
    "regularizers": {"reconstruction": {"weight": 1.0}},
    "train": {"steps": 2, "batch_size": 8, "log_every": 1, "sample_every": 1000, "sample_count": 4},
}


@pytest.fixture
def plugins(make_plugins):
    TestPlugin.watch = Watch()
    return make_plugins(("paired_test", TestPlugin()))


def build(plugins, *overrides, recipe=None):
    tables = apply_overrides(json.loads(json.dumps(recipe or PAIRED)), list(overrides))
    return Trainer(validate(tables, plugins.registry), plugins)


def problems(plugins, *overrides, recipe=None):
    with pytest.raises(RecipeError) as caught:
        build(plugins, *overrides, recipe=recipe)
    return dict(caught.value.problems)


def test_g_and_the_critic_get_the_input_made_from_the_batch(plugins):
    trainer = build(plugins, "regularizers.watch={}")
    trainer.fit()
    generator, critic = trainer.parts.generator, trainer.parts.discriminator
    training = [s for s in generator.sources if len(s) == 8]  # not the sample grid's 4
    assert len(training) == 2 and all(s.shape == (8, 1, 4, 4) for s in training)
    calls = [(x, s) for x, s in critic.calls if len(x) == 8]  # not the check at the start
    for _, source in calls:  # reals and fakes, each with the input of its pair
        assert source is not None and source.shape == (8, 1, 4, 4)
    reals = [x for x, s in calls if torch.equal(s, F.avg_pool2d(x, 4))]
    assert len(reals) == trainer.steps  # the D update's real pass: input made from it
    for _, real, source, fake in TestPlugin.watch.seen:
        assert torch.equal(source, F.avg_pool2d(real, 4))  # the G phase pairs them too
        assert fake.shape == real.shape


def test_adversarial_weight_zero_trains_g_alone_without_a_critic_call(plugins, tmp_path):
    trainer = build(plugins, "loss.adversarial_weight=0", "train.steps=3")
    before = {k: v.clone() for k, v in trainer.parts.discriminator.state_dict().items()}
    g_before = trainer.parts.generator.head.weight.detach().clone()
    trainer.fit()
    critic = trainer.parts.discriminator
    assert [x for x, _ in critic.calls if len(x) == 8] == []  # only the check at the start
    assert all(torch.equal(v, critic.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(g_before, trainer.parts.generator.head.weight)
    logged = read_metrics(trainer.run_dir)
    assert all("d_loss" not in r and "reg/reconstruction" in r for r in logged)


def test_the_critic_starts_at_loss_critic_start(plugins):
    trainer = build(plugins, "loss.critic_start=2", "train.steps=4")
    trainer.fit()
    logged = [r for r in read_metrics(trainer.run_dir) if "g_loss" in r]
    assert [("d_loss" in r) for r in logged] == [False, False, True, True]
    calls = [x for x, _ in trainer.parts.discriminator.calls if len(x) == 8]
    assert len(calls) == 2 * 3  # real, fake and G's fake at steps 3 and 4


def test_term_start_and_scheduled_weight(plugins):
    trainer = build(
        plugins,
        "regularizers.reconstruction.start=2",
        "loss.adversarial_weight={schedule='linear', start=0.0, end=1.0, kimg=0.032}",
        "train.steps=4",
    )
    trainer.fit()
    logged = [r for r in read_metrics(trainer.run_dir) if "g_loss" in r]
    assert [("reg/reconstruction" in r) for r in logged] == [False, False, True, True]
    assert [r["schedule/loss.adversarial_weight"] for r in logged] == pytest.approx(
        [0, 0.25, 0.5, 0.75]
    )


def test_adaptive_weight_is_vqgans_ratio_at_the_last_layer(plugins):
    trainer = build(plugins, "loss.adaptive_weight=true", "loss.adversarial_weight=0.5")
    last = trainer.parts.generator.last_layer
    a, b = torch.randn_like(last), torch.randn_like(last)
    rest, adversarial = (last * a).sum(), (last * b).sum()
    loss, weight = trainer._adaptive(adversarial, rest)
    expected = a.norm() / (b.norm() + 1e-4) * 0.5
    assert weight.item() == pytest.approx(expected.item(), rel=1e-5)
    trainer.parts.adversarial.adaptive_max = 1e-3
    assert trainer._adaptive(adversarial, rest)[1].item() == pytest.approx(0.5e-3)
    (grad,) = torch.autograd.grad(loss, last)  # no gradient through the ratio
    assert torch.allclose(grad, a + weight * b, atol=1e-6)
    trainer.parts.adversarial.adaptive_max = 1e4
    trainer.fit()  # and in the step: logged, finite
    logged = [r for r in read_metrics(trainer.run_dir) if "g_loss" in r]
    assert all(math.isfinite(r["reg/adversarial_weight"]) for r in logged)


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (("generator={name='dcgan', latent_dim=8, width=4}",), "input.name", "takes no input"),
        (("input={}",), "generator.name", "takes an input"),
        (("input.factor=3",), "input", "does not divide"),
        (("augment.name=diffaugment",), "augment.name", "conditioned on the generator's input"),
        (("regularizers={}", "loss.critic_start=5"), "loss.critic_start", "G-phase term"),
        (
            ("regularizers.reconstruction.start=2", "loss.critic_start=5"),
            "loss.critic_start",
            "from step 0",
        ),
        (
            ("regularizers.reconstruction.every=2", "loss.adaptive_weight=true"),
            "loss.adaptive_weight",
            "every step",
        ),
        (("input.name=''", "input.factor=4"), "input.factor", "need input.name"),
        (("generator.input_channels=3",), "generator.input_channels", "[input]"),
    ],
)
def test_recipe_mistakes_are_one_message(plugins, overrides, key, words):
    found = problems(plugins, *overrides)
    assert key in found, found
    assert words in found[key]


def test_a_term_comparing_with_a_target_needs_an_input(plugins, tiny_recipe):
    tiny_recipe["regularizers"] = {"reconstruction": {}}
    found = problems(plugins, recipe=tiny_recipe)
    assert "needs" not in found and "name the input" in found["regularizers.reconstruction"]


def test_adaptive_weight_needs_the_last_layer(plugins):
    class NoLast(Refiner):
        last_layer = None

    class Plugin:
        @hookimpl
        def ganforge_register_generators(self, register):
            register("no_last", NoLast)

    from ganforge.plugins import Plugins

    more = Plugins(blocked=[], extra=[("paired_test", TestPlugin()), ("no_last", Plugin())])
    found = problems(more, "generator.name=no_last", "loss.adaptive_weight=true")
    assert "last_layer" in found["loss.adaptive_weight"]


def test_resume_is_exact_with_a_random_input_start_and_adaptive_weight(plugins, run_recipe):
    overrides = (
        "input={name='mask', size=0.5}",
        "loss.critic_start=1",
        "loss.adaptive_weight=true",
        "train.checkpoint_every=2",
    )
    straight = run_recipe(PAIRED, *overrides, steps=4, plugins=plugins, name="straight")
    run_recipe(PAIRED, *overrides, steps=2, plugins=plugins, name="resumed")
    resumed = run_recipe(PAIRED, *overrides, steps=4, plugins=plugins, name="resumed")
    a, b = (load_file(r / "generator.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = [[r for r in read_metrics(run) if r["step"] == 4][0] for run in (straight, resumed)]
    assert last[0]["d_loss"] == last[1]["d_loss"] and last[0]["g_loss"] == last[1]["g_loss"]


def test_mask_input_adds_the_hole_as_a_channel(plugins):
    from ganforge_plugins.inputs import Mask

    mask = Mask(size=0.5, fill=0.0)
    images = torch.rand(5, 3, 8, 8) * 2 - 1
    out = mask(images)
    assert out.shape == (5, 4, 8, 8) and mask.shape(3, 8) == (4, 8)
    hole = out[:, 3:] > 0.5
    assert (hole.flatten(1).sum(1) == 16).all()  # a 4×4 square each
    assert torch.equal(out[:, :3], torch.where(hole, torch.zeros_like(images), images))


def test_export_records_the_input_and_generate_keeps_names(plugins, run_recipe, tmp_path):
    run = run_recipe(PAIRED, steps=2, plugins=plugins)
    export = run / "generator.safetensors"
    with safe_open(str(export), "pt") as f:
        meta = json.loads(f.metadata()["ganforge"])
    assert meta["input"]["name"] == "downscale" and meta["input"]["kwargs"] == {"factor": 4}
    assert (meta["input"]["channels"], meta["input"]["resolution"]) == (1, 4)
    assert meta["latent"]["shape"] == [0]
    # A 16-px image of constant 4×4 blocks and its exact 4×4 box-downscale give one output.
    blocks = np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8)
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.fromarray(np.kron(blocks, np.ones((4, 4), np.uint8))).save(folder / "big.png")
    Image.fromarray(blocks).save(folder / "small.png")
    (folder / "notes.txt").write_text("not an image")
    written = write_from_inputs(export, str(folder), tmp_path / "out", plugins=plugins)
    assert sorted(p.name for p in written) == ["big.png", "small.png"]
    big, small = (np.asarray(Image.open(tmp_path / "out" / n)) for n in ("big.png", "small.png"))
    assert big.shape == (16, 16) and np.array_equal(big, small)


def test_generate_input_mistakes_are_one_message(plugins, run_recipe, tmp_path, capsys):
    run = run_recipe(PAIRED, steps=1, plugins=plugins)
    export = str(run / "generator.safetensors")
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "odd.png")
    with pytest.raises(GanforgeError, match="takes 4×4 inputs, or 16×16 images"):
        write_from_inputs(export, str(folder), tmp_path / "o", plugins=plugins)
    assert main(["generate", export, "--input", str(folder), "--out", "x.png"]) == 2
    assert "--out-dir" in capsys.readouterr().err


def test_generate_input_refuses_a_latent_generator(run_recipe, tiny_recipe, tmp_path, capsys):
    run = run_recipe(tiny_recipe, steps=1)
    args = ["generate", str(run / "generator.safetensors"), "--input", str(tmp_path)]
    assert main([*args, "--out-dir", str(tmp_path / "o")]) == 2
    assert "takes latents, not an input" in capsys.readouterr().err


def test_eval_scores_outputs_against_their_targets(
    plugins, run_recipe, digits_classifier, tmp_path
):
    run = run_recipe(PAIRED, steps=1, plugins=plugins)
    recipe = tmp_path / "paired.toml"
    recipe.write_text(dump_toml(PAIRED))
    result = evaluate_model(
        run / "generator.safetensors", str(recipe), num=32, plugins=plugins, extractor="digits"
    )
    scores = result["metrics"]["generated"]
    assert {"fd", "psnr", "ssim"} <= scores.keys() and result["num"] == 32
    assert 0 < scores["psnr"] < 60 and -1 <= scores["ssim"] <= 1


def test_psnr_and_ssim_of_known_pairs():
    x = torch.rand(3, 1, 16, 16) * 1.6 - 0.8
    assert psnr(x, x + 0.2).tolist() == pytest.approx([20.0] * 3, abs=1e-4)  # 0.1 of the range
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    noise = torch.rand(3, 1, 16, 16) * 2 - 1
    assert (ssim(x, noise) < 0.2).all()
    assert (ssim(x, x * 0.9) > ssim(x, x * 0.5)).all()  # monotone in the damage


def test_sample_grids_show_input_output_and_target(plugins, run_recipe):
    run = run_recipe(PAIRED, "train.sample_every=1", steps=1, plugins=plugins)
    grid = Image.open(run / "samples" / "step_000001.png")
    assert grid.size[0] == 3 * 4 * (16 + 2) + 2  # four triplets in a row


def test_the_perceptual_extractor_stays_frozen_and_out_of_checkpoints(plugins, digits_classifier):
    from ganforge_plugins.digits import digits_extractor

    trainer = build(plugins, "regularizers.perceptual={extractor='digits', weight=1.0}")
    term = dict((n, r) for n, _, r in trainer.parts.regularizers)["perceptual"]
    net = term._net[0]
    trainer.fit()
    fresh = digits_extractor().state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in net.state_dict().items())
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    logged = [r for r in read_metrics(trainer.run_dir) if "g_loss" in r]
    assert all(r["reg/perceptual"] > 0 for r in logged)
    checkpoint = next((trainer.run_dir / "checkpoints").iterdir())
    names = [k for f in checkpoint.glob("*.safetensors") for k in load_file(f)]
    assert names and not any("perceptual" in k for k in names)
    # G's gradient from the term alone reaches its first layer
    g = trainer.parts.generator
    source = torch.rand(2, 1, 4, 4) * 2 - 1
    real = torch.rand(2, 1, 16, 16) * 2 - 1
    fake = g(torch.empty(2, 0), None, source=source)
    ctx = type("Ctx", (), {"fake": fake, "real": real})()
    loss, _ = term(ctx)
    loss.backward()
    assert g.body.weight.grad is not None and g.body.weight.grad.abs().sum() > 0


class WithFrozenPart(nn.Module):
    """A generator around a frozen "pretrained" part (batch norm and dropout inside it)."""

    latent_shape = (8,)
    latent_prior = "normal"

    def __init__(self, *, resolution, channels, num_classes):
        super().__init__()
        self.shape = (channels, resolution, resolution)
        self.pretrained = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5))
        self.pretrained.requires_grad_(False)
        self.head = nn.Linear(16, channels * resolution * resolution)
        self.modes: list[bool] = []

    def forward(self, z, y=None):
        h = self.pretrained(z)
        self.modes.append(self.pretrained.training)
        return torch.tanh(self.head(h)).view(len(z), *self.shape)


def test_frozen_submodules_stay_in_eval_mode_and_out_of_the_optimizer(tmp_path):
    class Plugin:
        @hookimpl
        def ganforge_register_generators(self, register):
            register("with_frozen", WithFrozenPart)

    from conftest import make_trainer

    trainer = make_trainer(tmp_path, "generator={name='with_frozen'}", extra=[("f", Plugin())])
    G = trainer.generator
    stepped = [p for g in trainer.execution.param_groups("generator") for p in g["params"]]
    assert {id(p) for p in stepped} == {id(p) for p in G.head.parameters()}
    before = {k: v.clone() for k, v in G.state_dict().items()}
    trainer.fit()  # sample grids and the export put G in eval mode and back in between
    after = G.state_dict()
    for k in before:  # the frozen part's weights and batch-norm statistics are as loaded
        assert torch.equal(before[k], after[k]) == k.startswith("pretrained."), k
    assert G.modes and not any(G.modes)  # eval mode at every call, training included
    assert G.training  # the rest trains as before


def write_pairs(root, count=12, side_by_side=False):
    """``count`` 16-px grey targets and, for each, an input that cannot be made from it: its
    4×4 box-downscaled copy, inverted. Returns the targets and inputs as arrays."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 256, (count, 16, 16), dtype=np.uint8)
    low = targets.reshape(count, 4, 4, 4, 4).mean((2, 4)).round().astype(np.uint8)
    inputs = 255 - low
    for i in range(count):
        name = f"pair{i:02d}.png"
        big_input = inputs[i].repeat(4, 0).repeat(4, 1)
        if side_by_side:
            root.mkdir(exist_ok=True)
            both = np.concatenate([big_input, targets[i]], axis=1)
            Image.fromarray(both).save(root / name)
        else:
            (root / "input").mkdir(parents=True, exist_ok=True)
            (root / "target").mkdir(parents=True, exist_ok=True)
            Image.fromarray(inputs[i]).save(root / "input" / name)
            Image.fromarray(targets[i]).save(root / "target" / name)
    return targets, inputs


def pairs(path) -> tuple[str, ...]:
    """The PAIRED recipe on the pairs written to ``path`` (16-px targets, 4-px inputs)."""
    return (
        "data={name='pairs', resolution=16, channels=1, input_resolution=4}",
        f"data.path='{path}'",
        "eval.every=2",
        "eval.num=10",
        "eval.extractor=identity",
    )


def test_pairs_from_files_give_g_the_stored_input_and_the_critic_the_target(
    plugins, tmp_path, monkeypatch
):
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(tmp_path / "cache"))
    targets, inputs = write_pairs(tmp_path / "pairs")
    trainer = build(plugins, *pairs(tmp_path / "pairs"), "regularizers.watch={}", "data.xflip=true")
    data = trainer.parts.data
    assert data.channels == 1 and data.images.shape[1:] == (2, 16, 16) and len(data) == 12
    trainer.fit()
    want = {}  # each target's input, from the files: flipped with it under xflip
    for t, i in zip(targets, inputs, strict=True):
        for flip in (False, True):
            tgt = t[:, ::-1] if flip else t
            inp = i[:, ::-1] if flip else i
            want[tgt.tobytes()] = torch.from_numpy(inp.astype(np.float32) / 127.5 - 1)
    assert TestPlugin.watch.seen
    for _, real, source, fake in TestPlugin.watch.seen:
        assert real.shape == fake.shape == (8, 1, 16, 16)  # the targets: one channel
        for r, s in zip(real, source, strict=True):
            pixels = ((r[0] + 1) * 127.5).round().to(torch.uint8).numpy()
            torch.testing.assert_close(s[0], want[pixels.tobytes()], rtol=0, atol=1e-6)
    records = read_metrics(trainer.run_dir)
    scored = [r for r in records if "eval/psnr" in r]
    assert scored and all(math.isfinite(r["eval/psnr"]) for r in scored)


def test_side_by_side_pairs_split_into_input_and_target(tmp_path):
    from ganforge.data import open_store
    from ganforge_plugins.inputs import pairs_source

    targets, inputs = write_pairs(tmp_path / "ab", side_by_side=True)
    source = pairs_source(
        resolution=16,
        path=str(tmp_path / "ab"),
        layout="side_by_side",
        channels=1,
        input_resolution=4,
    )
    data = open_store(source, 16, cache_dir=tmp_path / "cache")
    assert data.paired and data.channels == 1
    np.testing.assert_array_equal(data.images[:, 0], targets)
    np.testing.assert_array_equal(data.images[:, 1, ::4, ::4], inputs)


def test_pairs_mistakes_are_one_message(plugins, tmp_path):
    from ganforge.errors import DataError
    from ganforge_plugins.inputs import pairs_source

    write_pairs(tmp_path / "p")
    (tmp_path / "p" / "target" / "pair03.png").unlink()
    with pytest.raises(DataError, match="no partner of the same name.*pair03"):
        pairs_source(resolution=16, path=str(tmp_path / "p"), channels=1)
    write_pairs(tmp_path / "q")
    noise_to_image = (
        "input={}",
        "generator={name='dcgan', width=4}",
        "discriminator={name='dcgan', width=4}",
        "regularizers={}",
    )
    said = problems(plugins, *pairs(tmp_path / "q"), *noise_to_image)
    assert "the data holds pairs" in said["input.name"]


def test_unpaired_domains_train_without_a_target_per_input(plugins, tmp_path, monkeypatch):
    """Two folders in any numbers: every target once, each beside a seeded input; terms
    that compare an output with its target, and a critic conditioned on the input, refused."""
    from ganforge.data import open_store
    from ganforge_plugins.inputs import pairs_source

    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    for folder, count, side in (("input", 5, 4), ("target", 8, 16)):
        (tmp_path / "u" / folder).mkdir(parents=True)
        for i in range(count):
            picture = rng.integers(0, 256, (side, side), dtype=np.uint8)
            Image.fromarray(picture).save(tmp_path / "u" / folder / f"{folder}{i}.png")
    options = {"path": str(tmp_path / "u"), "layout": "unpaired", "channels": 1}
    data = open_store(pairs_source(resolution=16, input_resolution=4, **options), 16)
    assert len(data) == 8 and data.channels == 1
    stored = {bytes(x[::4, ::4].tobytes()) for x in data.images[:, 1]}
    assert len(stored) == 5  # every input used, the 8 targets each once
    targets = {x.tobytes() for x in data.images[:, 0]}
    assert len(targets) == 8
    recipe = (
        "data={name='pairs', resolution=16, channels=1, input_resolution=4, layout='unpaired'}",
        f"data.path='{tmp_path / 'u'}'",
    )
    assert "unpaired" in problems(plugins, *recipe)["regularizers.reconstruction"]
    plain_critic = ("regularizers={}", "discriminator={name='dcgan', width=4}")
    assert "unpaired" in problems(plugins, *recipe, "regularizers={}")["discriminator"]
    trainer = build(plugins, *recipe, *plain_critic)
    trainer.fit()
    assert trainer.step == 2
