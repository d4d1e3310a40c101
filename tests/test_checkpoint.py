"""Checkpoints lose nothing: exact resume (interrupted and extended), atomic writes, damaged
checkpoints skipped, recipe changes refused, fine-tuning from weights, nothing unpickled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import ganforge
from conftest import ROOT
from ganforge.checkpoint import (
    CheckpointError,
    flatten_optimizer,
    latest_checkpoint,
    list_checkpoints,
    open_checkpoint,
)
from ganforge.errors import RecipeError
from ganforge.trainer import read_metrics

# Everything that could drift on resume: several critic steps, EMA with warm-up, LR decay,
# schedules over the images seen (R1's gamma, Adam's beta2),
# dropout (global RNG), batch norm (buffers), a lazy penalty (step-dependent), ADA's
# probability and its partial sums, and 32 images
# in batches of 8 × n_critic 2 = two steps per epoch, so the sampler crosses epochs mid-run.
EXACT = (
    "train.n_critic=2",
    "train.log_every=1",
    "ema.decay=0.9",
    "ema.warmup_steps=3",
    "optim.generator.lr_decay=linear",
    "optim.generator.lr_decay_steps=8",
    "optim.discriminator.lr_decay=linear",
    "optim.discriminator.lr_decay_start=2",
    "optim.discriminator.lr_decay_steps=10",
    "discriminator.dropout=0.2",
    "regularizers.r1.gamma={schedule='cosine', start=0.5, end=0.05, kimg=0.1}",
    "optim.generator.betas=[0.0, {schedule='linear', start=0.9, end=0.99, kimg=0.1}]",
    "regularizers.r1.every=2",
    "loss.name=hinge",
    # Adaptive augmentation, adjusted every 2 steps: checkpoints at odd steps hold partial sums.
    "augment.name=diffaugment",
    "augment.adaptive=true",
    "augment.p=0.3",
    "augment.interval=2",
    "augment.speed_images=400",
)
N = 3
# Every checkpoint and export in this module is read with unpickling disabled.
pytestmark = pytest.mark.usefixtures("no_unpickling")


def full_state(trainer) -> dict[str, torch.Tensor]:
    """Every tensor of the training state, plus counters and random streams."""
    out = {}
    for name, module in (
        ("G", trainer.generator),
        ("D", trainer.discriminator),
        ("EMA", trainer.ema.module),
    ):
        out.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    for name, optimizer in (
        ("opt_g.", trainer.execution.optimizers["generator"]),
        ("opt_d.", trainer.execution.optimizers["discriminator"]),
    ):
        out.update(flatten_optimizer(optimizer.state_dict(), name)[0])
    out["step"] = torch.tensor(trainer.step)
    out["sampler"] = torch.tensor([trainer.sampler.epoch, trainer.sampler.offset])
    out["latent_rng"] = trainer.progress.latent_rng.get_state()
    out["torch_rng"] = torch.get_rng_state()
    augmenter = trainer.augmenter
    out.update({f"augment.{name}": getattr(augmenter, name).clone() for name in augmenter.STATE})
    return out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differs after resume: {different}"


class StopAfter:
    """Interrupts training (like Ctrl-C) when a given step is logged."""

    def __init__(self, step):
        self.step = step

    @ganforge.hookimpl
    def ganforge_log(self, run, step, values):
        if step == self.step:
            raise KeyboardInterrupt


@pytest.fixture
def uninterrupted(tmp_path, tiny):
    trainer = tiny(*EXACT, f"train.steps={2 * N}", f"run.out_dir={tmp_path / 'straight'}")
    trainer.fit()
    return trainer


def test_an_interrupted_run_resumes_bit_for_bit(tiny, uninterrupted):
    first = tiny(
        *EXACT,
        f"train.steps={2 * N}",
        f"train.checkpoint_every={N}",
        extra=[("stop", StopAfter(N + 2))],
    )
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert [m["step"] for m in read_metrics(first.run_dir)] == list(range(1, N + 3))

    resumed = tiny(*EXACT, f"train.steps={2 * N}", f"train.checkpoint_every={N}")
    assert resumed.step == N and resumed.info.start_step == N
    resumed.fit()
    assert_same_state(full_state(resumed), full_state(uninterrupted))
    # The log is cut back to the checkpoint, then continues: every step once, same values.
    logged, straight = read_metrics(resumed.run_dir), read_metrics(uninterrupted.run_dir)
    assert [m["step"] for m in logged] == list(range(1, 2 * N + 1))
    for key in ("d_loss", "augment/p", "augment/r_t"):
        assert [m[key] for m in logged] == [m[key] for m in straight], key
    assert len({m["augment/p"] for m in straight}) > 2  # p moved during the run


def test_a_run_on_mirrored_data_resumes_bit_for_bit(tmp_path, tiny):
    """data.xflip doubles the samples the data order covers: a resume continues it exactly."""
    mirrored = (*EXACT, "data.xflip=true")
    straight = tiny(*mirrored, "train.steps=6", f"run.out_dir={tmp_path / 'straight'}")
    straight.fit()
    assert straight.sampler.size == 64  # 32 images and their mirrors
    first = tiny(*mirrored, "train.steps=3")
    first.fit()
    resumed = tiny(*mirrored, "train.steps=6")
    assert resumed.step == 3
    resumed.fit()
    assert_same_state(full_state(resumed), full_state(straight))


def test_a_finished_run_extended_equals_the_longer_run(tiny, uninterrupted):
    short = tiny(*EXACT, f"train.steps={N}", "train.checkpoint_every=0")
    short.fit()
    assert [p.name for p in list_checkpoints(short.run_dir)] == [f"step_{N:06d}"]
    extended = tiny(*EXACT, f"train.steps={2 * N}", "train.log_every=2")  # logging may change
    assert extended.step == N
    extended.fit()
    assert_same_state(full_state(extended), full_state(uninterrupted))


def test_a_latent_stream_from_another_kind_of_device_restarts_from_the_seed(
    tiny, monkeypatch, capsys
):
    # Training latents come from a generator on the training device, whose state is another
    # kind on a GPU (16 bytes) than on the CPU (5,056 bytes).
    short = tiny(*EXACT, f"train.steps={N}", "train.checkpoint_every=0")
    short.fit()
    resumed = tiny(*EXACT, f"train.steps={N + 1}")
    expected = resumed.latents(4)
    saved_elsewhere = {"latent": torch.zeros(16, dtype=torch.uint8)}
    assert not ganforge.checkpoint.restore_rng(
        {**rng_of(short), **saved_elsewhere}, resumed.progress.latent_rng, resumed.acc.device
    )

    real = ganforge.checkpoint.restore_rng
    monkeypatch.setattr(
        "ganforge.state.restore_rng",
        lambda states, rng, device: real({**states, **saved_elsewhere}, rng, device),
    )
    again = tiny(*EXACT, f"train.steps={N + 1}")
    assert "written on another kind of device than cpu" in capsys.readouterr().err
    assert again.step == N
    reseeded = again.latents(4)
    assert not torch.equal(reseeded, expected)  # not the stream the checkpoint held...
    third = tiny(*EXACT, f"train.steps={N + 1}")
    assert torch.equal(third.latents(4), reseeded)  # ...but a reproducible one
    again.fit()


def rng_of(trainer) -> dict[str, torch.Tensor]:
    return ganforge.checkpoint.rng_states(trainer.progress.latent_rng, trainer.acc.device)


class RunningMean(torch.nn.Module):
    """A D-phase regularizer with state: a running mean of D(real) in buffers."""

    phase = "d"

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, ctx):
        logits = ctx.critic(ctx.real, ctx.y_real).logits
        self.mean.lerp_(logits.detach().mean(), 0.5)
        self.calls += 1
        return 0.01 * (logits - self.mean).square().mean(), {"mean": self.mean.clone()}


class StatefulRegularizer:
    @ganforge.hookimpl
    def ganforge_register_regularizers(self, register):
        register("running_mean", RunningMean)


def test_a_regularizers_state_is_checkpointed_and_resumed_exactly(tmp_path, tiny):
    extra, lazy = [("stateful", StatefulRegularizer())], "regularizers.running_mean.every=1"
    straight = tiny(lazy, "train.steps=4", f"run.out_dir={tmp_path / 'straight'}", extra=extra)
    straight.fit()
    first = tiny(lazy, "train.steps=2", extra=extra)
    first.fit()
    saved = latest_checkpoint(first.run_dir).tensors("models")
    assert saved["regularizers.running_mean.calls"] == 2
    resumed = tiny(lazy, "train.steps=4", extra=extra)
    regularizer = resumed.parts.regularizers[0][2]
    assert regularizer.calls == 2
    assert torch.equal(regularizer.mean, saved["regularizers.running_mean.mean"])
    resumed.fit()
    assert regularizer.calls == 4
    for name in ("models", "optimizers"):
        assert_same_state(
            latest_checkpoint(resumed.run_dir).tensors(name),
            latest_checkpoint(straight.run_dir).tensors(name),
        )


class Recorder:
    def __init__(self):
        self.checkpoints = []

    @ganforge.hookimpl
    def ganforge_checkpoint(self, run, step, path):
        self.checkpoints.append((step, path))


def test_checkpoints_every_k_steps_and_at_the_end_keeping_the_newest(tiny):
    recorder = Recorder()
    trainer = tiny(
        "train.steps=5",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=2",
        extra=[("rec", recorder)],
    )
    trainer.fit()
    root = trainer.run_dir / "checkpoints"
    assert [step for step, _ in recorder.checkpoints] == [2, 4, 5]
    assert recorder.checkpoints[-1][1] == str(root / "step_000005")
    assert sorted(p.name for p in root.iterdir()) == ["step_000004", "step_000005"]
    files = sorted(p.name for p in (root / "step_000005").iterdir())
    assert files == [
        "models.safetensors",
        "optimizers.safetensors",
        "rng.safetensors",
        "state.json",
    ]
    assert open_checkpoint(root / "step_000005").state["sampler"] == trainer.sampler.state_dict()


def truncate_models(folder):
    file = folder / "models.safetensors"
    file.write_bytes(file.read_bytes()[:-10])


def drop_rng(folder):
    (folder / "rng.safetensors").unlink()


def edit_state(**changes):
    def edit(folder):
        state = json.loads((folder / "state.json").read_text())
        state.update(changes)
        for key, value in changes.items():
            if value is None:
                del state[key]
        # Re-sealed: a state.json as a run would write it with these values (its checksum
        # alone would catch the edit otherwise; see test_reliability_faults).
        state[ganforge.checkpoint.STATE_DIGEST] = ganforge.checkpoint.state_digest(state)
        (folder / "state.json").write_text(json.dumps(state))

    return edit


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (truncate_models, "models.safetensors does not match its checksum"),
        (drop_rng, "rng.safetensors is missing"),
        (edit_state(recipe=None), "bad or missing recipe"),
        (edit_state(files={}), "does not list"),
        (edit_state(step="3"), "bad or missing step"),
        (lambda folder: (folder / "state.json").write_text("{"), "unreadable"),
        # Once a KeyError on rank 1 and a gloo traceback on rank 0.
        (edit_state(world_size=2), "2 process(es) wrote it, and rng.safetensors holds the "),
    ],
    ids=[
        "truncated",
        "missing-file",
        "missing-key",
        "no-files",
        "wrong-type",
        "bad-json",
        "world-size-without-its-streams",
    ],
)
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(damage, reason, tiny, capsys):
    tiny("train.steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=1").fit()
    root = tiny("train.steps=3").run_dir / "checkpoints"
    # keep_checkpoints=1 keeps the newest only: add an older one back to fall back on.
    tiny("train.steps=2", "train.checkpoint_every=1", "run.out_dir=older").fit()
    shutil.copytree("older/checkpoints/step_000002", root / "step_000002")
    damage(root / "step_000003")
    capsys.readouterr()

    resumed = tiny("train.steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=1")
    assert resumed.step == 2
    err = capsys.readouterr().err
    assert "warning: skipping checkpoint" in err and "step_000003" in err and reason in err
    resumed.fit()
    # The damaged checkpoint was set aside (not deleted), and never outranks the new ones.
    assert [p.name for p in list_checkpoints(resumed.run_dir)] == ["step_000004"]
    assert [p.name for p in root.iterdir() if p.name.startswith("step_000003.superseded-")]


def test_a_damaged_checkpoint_named_explicitly_or_the_only_one_is_an_error(tiny):
    tiny("train.steps=2", "train.checkpoint_every=0").fit()
    folder = tiny("train.steps=2").run_dir / "checkpoints" / "step_000002"
    truncate_models(folder)
    with pytest.raises(CheckpointError, match="damaged"):
        tiny("train.steps=4", f"train.resume={folder}")
    with pytest.raises(CheckpointError, match="none is usable.*--no-resume"):
        tiny("train.steps=4")


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tiny):
    tiny("train.steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=0").fit()
    run = tiny("train.steps=3").run_dir
    older = tiny("train.steps=3", f"train.resume={run / 'checkpoints' / 'step_000001'}")
    assert older.step == 1
    assert len(list_checkpoints(run)) == 3  # building a run changes no file...
    older.steps = 1  # ...its fit does: the newer line is set aside before training
    older.fit()
    assert [p.name for p in list_checkpoints(run)] == ["step_000001"]
    assert tiny("train.steps=3").step == 1  # "auto" now follows the resumed line


def test_a_checkpoint_killed_mid_write_leaves_the_previous_one_usable(tmp_path):
    # A separate process dies (no cleanup, like SIGKILL) halfway through writing the second
    # checkpoint's optimizer file.
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from pathlib import Path
        import ganforge.checkpoint as checkpoint
        from conftest import make_trainer

        real_save, calls = checkpoint.save_file, []

        def dying_save(tensors, filename):
            calls.append(filename)
            real_save(tensors, filename)
            if len(calls) == 5:  # checkpoint 2: models, then optimizers, cut short
                Path(filename).write_bytes(Path(filename).read_bytes()[:100])
                os._exit(137)

        checkpoint.save_file = dying_save
        make_trainer(Path({str(tmp_path)!r}), "train.steps=6", "train.checkpoint_every=2").fit()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 137, done.stderr
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000002"]
    assert list(root.glob(".step_000004.*.tmp"))  # the torn write, never under its final name
    assert latest_checkpoint(tmp_path / "run").step == 2

    from conftest import make_trainer

    resumed = make_trainer(tmp_path, "train.steps=6", "train.checkpoint_every=2")
    assert resumed.step == 2
    resumed.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [
        "step_000002",
        "step_000004",
        "step_000006",
    ]
    assert not list(root.glob(".*.tmp"))  # the torn write is cleaned up


def test_a_resume_refuses_a_recipe_that_changes_models_or_optimisation(tiny):
    tiny("train.steps=2").fit()
    with pytest.raises(RecipeError) as err:
        tiny("train.steps=4", "generator.width=8", "optim.generator.lr=0.001")
    keys = [key for key, _ in err.value.problems]
    assert keys[:2] == ["generator.width", "optim.generator.lr"]
    assert "init_from" in str(err.value)
    # Steps, logging, sampling and checkpoint settings may change.
    resumed = tiny("train.steps=4", "train.log_every=3", "train.sample_every=7")
    assert resumed.step == 2
    with pytest.raises(CheckpointError, match="past train.steps"):
        tiny("train.steps=1")
    edit_state(mixed_precision="bf16")(resumed.run_dir / "checkpoints" / "step_000002")
    with pytest.raises(CheckpointError, match="mixed precision 'bf16'"):
        tiny("train.steps=4")


def test_a_checkpoint_from_before_a_key_existed_resumes_with_its_default(tiny):
    first = tiny("train.steps=2")
    first.fit()
    folder = first.run_dir / "checkpoints" / "step_000002"
    state = json.loads((folder / "state.json").read_text())
    del state["recipe"]["data"]["clusters"]  # as written before data.clusters existed
    del state["recipe"]["optim"]["generator"]["lr_decay"]
    del state["state_sha256"]  # ...and before state.json had its own checksum
    (folder / "state.json").write_text(json.dumps(state))
    assert tiny("train.steps=4").step == 2
    # A value other than the default is still a change of model.
    with pytest.raises(RecipeError, match="data.clusters: is 3, but the checkpoint was trained"):
        tiny("train.steps=4", "data.clusters=3")


def test_resume_never_moves_the_earlier_run_aside(tmp_path, tiny):
    first = tiny("train.steps=2")
    first.fit()
    fresh = tiny("train.steps=2", "train.resume=never")
    assert fresh.step == 0 and list_checkpoints(tmp_path / "run")  # building moves nothing
    fresh.fit()
    assert "moved to" in fresh.start_message
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.before-")]
    assert len(moved) == 1 and list_checkpoints(moved[0])  # nothing the user made is lost
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000002"]  # fresh's


def test_init_from_takes_weights_but_not_optimizer_state_or_counters(tmp_path, tiny):
    source = tiny("train.steps=3", "ema.decay=0.5")
    source.fit()
    tuned = tiny(
        f"train.init_from={source.run_dir}",
        "train.steps=2",
        "ema.decay=0.5",
        "optim.generator.lr=0.001",  # a new run: the optimisation may change
        f"run.out_dir={tmp_path / 'tuned'}",
    )
    assert tuned.step == 0 and not tuned.execution.optimizers["generator"].state_dict()["state"]
    for mine, theirs in (
        (tuned.generator, source.generator),
        (tuned.discriminator, source.discriminator),
        (tuned.ema.module, source.ema.module),
    ):
        for k, v in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="do not fit"):
        tiny(f"train.init_from={source.run_dir}", "generator.width=8", "run.out_dir=other")


def test_init_from_another_architecture_takes_the_matching_tensors(tmp_path, tiny, capsys):
    """train.init_keys = "matching": a generator with another latent size takes every tensor
    whose name and shape match (all but its first layer), from a run folder or from an
    export; the rest stay as freshly initialised. "all" refuses, naming the mismatch."""
    source = tiny("train.steps=2")
    source.fit()
    export = source.run_dir / "generator.safetensors"
    fresh = tiny("generator.latent_dim=16", f"run.out_dir={tmp_path / 'fresh'}")
    for origin in (source.run_dir, export):
        other = tiny(
            f"train.init_from={origin}",
            "train.init_keys=matching",
            "generator.latent_dim=16",
            f"run.out_dir={tmp_path / 'other'}",
        )
        theirs, mine = source.generator.state_dict(), other.generator.state_dict()
        same = [k for k in mine if k in theirs and mine[k].shape == theirs[k].shape]
        assert 0 < len(same) < len(mine)
        for k, v in mine.items():
            expected = theirs[k] if k in same else fresh.generator.state_dict()[k]
            assert torch.equal(v, expected), k
        said = capsys.readouterr().out
        assert f"generator: {len(same)} of {len(mine)} tensors" in said
        if origin == export:  # an export holds G alone: D starts fresh
            assert "discriminator: fresh" in said
            for k, v in other.discriminator.state_dict().items():
                assert torch.equal(v, fresh.discriminator.state_dict()[k]), k
        other.directory.release()
    with pytest.raises(CheckpointError, match="do not fit"):
        tiny(f"train.init_from={export}", "generator.latent_dim=16", "run.out_dir=o2")
    from ganforge.checkpoint import load_matching

    unrelated = torch.nn.Sequential(torch.nn.Linear(3, 5))  # no name and shape in common
    with pytest.raises(CheckpointError, match="none of the 13 tensors of the G in x match"):
        load_matching(unrelated, source.generator.state_dict(), "G in x")


def test_init_from_an_export_starts_g_and_its_average_from_it(tmp_path, tiny):
    source = tiny("train.steps=2", "ema.decay=0.5")
    source.fit()
    tuned = tiny(
        f"train.init_from={source.run_dir / 'generator.safetensors'}",
        "ema.decay=0.5",
        f"run.out_dir={tmp_path / 'tuned'}",
    )
    exported = source.ema.module.state_dict()  # what the export holds: the EMA generator
    for module in (tuned.generator, tuned.ema.module):
        for k, v in module.state_dict().items():
            assert torch.equal(v, exported[k]), k


def test_checkpoints_load_with_pickle_disabled(tiny, no_unpickling):
    trainer = tiny("train.steps=2", "ema.decay=0.5")
    trainer.fit()
    resumed = tiny("train.steps=3", "ema.decay=0.5")
    assert resumed.step == 2
    resumed.fit()
    from ganforge.export import export_checkpoint

    path = export_checkpoint(latest_checkpoint(resumed.run_dir), resumed.run_dir / "e.safetensors")
    for export in (path, resumed.run_dir / "generator.safetensors"):
        generator, info = ganforge.load_generator(export)
        assert info.step == 3 and info.ema


def test_the_cli_resumes_by_default_and_starts_anew_with_no_resume(tmp_path, capsys):
    from conftest import tiny_tables
    from ganforge.cli import main
    from ganforge.recipe import dump_toml

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(dump_toml(tiny_tables(tmp_path)))
    assert main([str(recipe), "train.steps=2"]) == 0
    assert main([str(recipe), "train.steps=3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3]
    assert main([str(recipe), "run.seed=0", "--no-resume", "train.steps=1"]) == 0
    assert "the earlier run was moved to" in capsys.readouterr().out
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1]
    assert main([str(recipe), "train.steps=2", "generator.width=8"]) == 2
    assert "generator.width: is 8, but the checkpoint" in capsys.readouterr().err
