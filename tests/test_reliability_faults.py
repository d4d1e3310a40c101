"""Faults during a run lose nothing: non-finite streaks, Ctrl-C, a full disk, a path that cannot
be written, and SIGKILL at random moments, each resumed to the uninterrupted run's weights."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint import EXACT, assert_same_state, full_state

import ganforge
import ganforge.checkpoint
from conftest import ROOT, TOY_EVAL_RUN, tiny_tables
from ganforge.checkpoint import latest_checkpoint, list_checkpoints, open_checkpoint
from ganforge.cli import main
from ganforge.errors import INTERRUPTED, NON_FINITE, TERMINATED, TrainingStopped
from ganforge.recipe import dump_toml
from ganforge.trainer import Trainer, read_metrics


class NaNFrom:
    """A ``bce`` loss whose D and G losses turn NaN from the ``start``-th step on."""

    needs_real_for_g = False

    def __init__(self, *, start: int = 6):
        self.start, self.calls = start, 0

    def _bce(self, out, target: float) -> torch.Tensor:
        logits = out.logits
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.full_like(logits, target)
        )
        return loss * float("nan") if self.calls >= self.start else loss

    def d_loss(self, real, fake, y_real, y_fake):
        return self._bce(real, 1.0) + self._bce(fake, 0.0)

    def g_loss(self, fake, real, y_real, y_fake):
        self.calls += 1  # one G update per step: calls is the step number once incremented
        return self._bce(fake, 1.0)


class NaNPlugin:
    @ganforge.hookimpl
    def ganforge_register_losses(self, register):
        register("nan_from", NaNFrom)


def test_a_run_of_non_finite_steps_stops_and_keeps_the_last_good_checkpoint(
    tiny, reliability_report
):
    settings = ("loss.name=nan_from", "train.log_every=2", "train.checkpoint_every=3")
    trainer = tiny(
        *settings, "train.steps=30", "train.max_skipped_in_a_row=4", extra=[("nan", NaNPlugin())]
    )
    with pytest.raises(TrainingStopped) as stop:
        trainer.fit()
    # Steps 6.. are skipped; the streak reaches 4 at step 9, a checkpoint step: checked first.
    assert stop.value.exit_status == NON_FINITE and trainer.step == 9
    message = str(stop.value)
    assert "the last 4 steps were all skipped" in message
    assert "train.max_skipped_in_a_row = 4" in message and "step_000006" in message
    assert [p.name for p in list_checkpoints(trainer.run_dir)] == ["step_000003", "step_000006"]
    assert not (trainer.run_dir / "generator.safetensors").exists()
    # The kept checkpoint holds finite weights, those of the last step that trained (5).
    kept = latest_checkpoint(trainer.run_dir)
    assert kept.state["skipped_in_a_row"] == 1  # step 6 itself was skipped
    weights = kept.tensors("models")
    assert all(torch.isfinite(t).all() for k, t in weights.items() if "running" not in k)
    for name, value in trainer.generator.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(weights[f"generator.{name}"], value), name
    # Updates are counted one by one: G at step 6, then D and G at steps 7 and 8 (logged).
    assert read_metrics(trainer.run_dir)[-1]["skipped_steps"] == 5

    # Resuming from it restores the streak, so the limit still counts from step 6.
    resumed = tiny(*settings, "train.steps=30", extra=[("nan", NaNPlugin())])
    assert resumed.step == 6 and resumed.progress.skipped_in_a_row.item() == 1
    reliability_report["non-finite steps"]["runs stopped after a streak"] += 1


def test_max_skipped_in_a_row_0_never_stops(tiny):
    trainer = tiny(
        "loss.name=nan_from",
        "loss.start=1",
        "train.steps=6",
        "train.max_skipped_in_a_row=0",
        extra=[("nan", NaNPlugin())],
    )
    assert trainer.fit() is not None and trainer.step == 6
    assert trainer.progress.skipped_in_a_row.item() == 6


class CtrlCAt:
    """Presses Ctrl-C (a real SIGINT to this process) when a step is logged."""

    def __init__(self, step: int, times: int = 1):
        self.step, self.times = step, times

    @ganforge.hookimpl
    def ganforge_log(self, run, step, values):
        if step == self.step:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)


@pytest.fixture
def terminal_sigint():
    """SIGINT handled as in a terminal. A shell that starts the tests in the background
    (``cmd &``, nohup, some CI runners) ignores SIGINT, Python keeps it ignored, and ganforge
    then rightly leaves Ctrl-C alone; these tests need Python's default handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("terminal_sigint")
def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_resumes_exactly(
    tmp_path, tiny, reliability_report
):
    steps = ("train.steps=6", "train.checkpoint_every=4")
    straight = tiny(*EXACT, *steps, f"run.out_dir={tmp_path / 'straight'}")
    straight.fit()

    first = tiny(*EXACT, *steps, extra=[("ctrl_c", CtrlCAt(3))])
    with pytest.raises(TrainingStopped) as stop:
        first.fit()
    assert stop.value.exit_status == INTERRUPTED and first.step == 3
    assert "interrupted at step 3" in str(stop.value) and "step_000003" in str(stop.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = tiny(*EXACT, *steps)
    assert resumed.step == 3
    resumed.fit()
    assert_same_state(full_state(resumed), full_state(straight))
    reliability_report["Ctrl-C"]["stops resumed bit for bit"] += 1


def write_recipe(tmp_path, *overrides, name: str = "tiny") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(dump_toml(tiny_tables(tmp_path, *overrides)))
    return str(path)


@pytest.mark.usefixtures("terminal_sigint")
def test_ctrl_c_through_the_cli_exits_130_and_a_second_one_stops_at_once(
    tmp_path, capsys, monkeypatch
):
    recipe = write_recipe(tmp_path, "train.steps=5", "train.checkpoint_every=0")
    presses = {"step": 1, "times": 1}
    real_step = Trainer.train_step

    def step_then_ctrl_c(self, step, **kwargs):
        out = real_step(self, step, **kwargs)
        if step == presses["step"]:
            for _ in range(presses["times"]):
                signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    assert main([recipe]) == INTERRUPTED
    err = capsys.readouterr().err
    assert "Ctrl-C: stopping after this step" in err
    assert "ganforge: stopped: interrupted at step 2" in err and "Traceback" not in err
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000002"]

    # Twice: the second press interrupts the step itself; no checkpoint of a half step.
    presses.update(step=3, times=2)
    assert main([recipe]) == INTERRUPTED
    err = capsys.readouterr().err
    assert err.rstrip().endswith("ganforge: interrupted") and "Traceback" not in err
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000002"]

    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main([recipe]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("terminal_sigint")
def test_ctrl_c_in_the_last_step_lets_the_run_finish(tmp_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path, "train.steps=3", "train.checkpoint_every=0")
    real_step = Trainer.train_step

    def last_step_then_ctrl_c(self, step, **kwargs):
        out = real_step(self, step, **kwargs)
        if step == 2:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", last_step_then_ctrl_c)
    assert main([recipe]) == 0  # training was over: the export and report are written
    assert (tmp_path / "run" / "generator.safetensors").exists()
    assert "ganforge: done: steps 0 -> 3" in capsys.readouterr().out


def start_logging_run(tmp_path, recipe: str) -> subprocess.Popen:
    """``python -m ganforge RECIPE`` in its own process, returned once it has logged 2 steps."""
    env = {**os.environ, "GANFORGE_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.Popen(
        [sys.executable, "-m", "ganforge", recipe],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.1)
    return run


def test_sigterm_stops_like_ctrl_c_with_exit_143_and_the_run_resumes(tmp_path):
    # What a scheduler sends before it preempts a job: the step finishes, its checkpoint is
    # written, and the same command continues the run.
    recipe = write_recipe(tmp_path, "train.steps=100000", "train.log_every=1")
    run = start_logging_run(tmp_path, recipe)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    assert run.returncode == TERMINATED, err[-2000:]
    assert "SIGTERM: stopping after this step" in err and "Traceback" not in err
    stopped = err.split("ganforge: stopped: terminated (SIGTERM) at step ")[1]
    step = int(stopped.split(";")[0])
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [f"step_{step:06d}"]
    assert main([recipe, f"train.steps={step + 2}"]) == 0
    assert [m["step"] for m in read_metrics(tmp_path / "run")][-2:] == [step + 1, step + 2]


def test_a_full_disk_while_checkpointing_is_one_clear_error_and_loses_nothing(
    tmp_path, capsys, monkeypatch, reliability_report
):
    recipe = write_recipe(tmp_path, "train.steps=6", "train.checkpoint_every=2")
    real_save, calls = ganforge.checkpoint.save_file, []

    def disk_full_at_checkpoint_2(tensors, filename):
        calls.append(filename)
        if len(calls) == 5:  # checkpoint 2: models written, then the disk is full
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        real_save(tensors, filename)

    monkeypatch.setattr(ganforge.checkpoint, "save_file", disk_full_at_checkpoint_2)
    assert main([recipe]) == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "step_000004" in err
    assert "No space left on device" in err and "step_000002, is intact" in err
    assert "Traceback" not in err
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_000002"]  # no torn folder left
    assert open_checkpoint(root / "step_000002").step == 2

    monkeypatch.setattr(ganforge.checkpoint, "save_file", real_save)
    assert main([recipe]) == 0  # space freed: the same command continues
    assert "resumed from" in capsys.readouterr().out
    reliability_report["disk full"]["checkpoint writes failed and resumed"] += 1


def test_missing_files_and_unwritable_run_folders_are_one_clear_error(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    cases = [
        (["train", str(tmp_path / "missing.toml")], "recipe file not found"),
        (["validate", str(tmp_path / "missing.toml")], "recipe file not found"),
        (["export", str(tmp_path / "no_run"), "--out", "g.safetensors"], "does not exist"),
        (["generate", str(tmp_path / "none.safetensors"), "--out", "g.png"], "none.safetensors"),
        (
            [write_recipe(tmp_path), f"run.out_dir={tmp_path / 'a_file' / 'run'}"],
            "cannot create the run directory",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert "(run.out_dir): Not a directory" in err


# --------------------------------------------------------------------------- SIGKILL

KILL_RECIPE = (
    "train.steps=16",
    "train.n_critic=2",
    "train.checkpoint_every=1",
    "train.keep_checkpoints=2",
    "ema.decay=0.9",
    "discriminator.dropout=0.2",
)


def last_logged_step(run_dir) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def test_sigkill_at_random_moments_then_resume_ends_with_the_same_weights(
    tmp_path, reliability_report
):
    env = {**os.environ, "GANFORGE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def launch(out_dir):
        recipe = write_recipe(tmp_path, *KILL_RECIPE, f"run.out_dir={out_dir}", name=out_dir.name)
        with open(tmp_path / f"{out_dir.name}.log", "a") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "ganforge", recipe],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    straight = launch(tmp_path / "straight")  # on the other core meanwhile
    run_dir, rng, kills = tmp_path / "killed", random.Random(10), []
    seen = 0
    for _ in range(3):
        target = seen + rng.randint(1, 4)
        process = launch(run_dir)
        while last_logged_step(run_dir) < target and process.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))  # mid-step, mid-checkpoint, mid-log: wherever it lands
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
        seen = last_logged_step(run_dir)
        torn = list((run_dir / "checkpoints").glob(".step_*.tmp"))
        kills.append({"logged": seen, "torn_checkpoint_write": bool(torn)})
    final = launch(run_dir)
    assert final.wait(timeout=120) == 0, (tmp_path / "killed.log").read_text()
    assert straight.wait(timeout=120) == 0, (tmp_path / "straight.log").read_text()

    assert [k["logged"] for k in kills] == sorted(k["logged"] for k in kills)
    assert kills[-1]["logged"] < 16, kills  # every kill landed before the end
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 17))
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    exported = load_file(str(run_dir / "generator.safetensors"))
    expected = load_file(str(tmp_path / "straight" / "generator.safetensors"))
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)
    for group in ("models", "optimizers"):
        assert_same_state(
            latest_checkpoint(run_dir).tensors(group),
            latest_checkpoint(tmp_path / "straight").tensors(group),
        )
    report = reliability_report["SIGKILL"]
    report["kills"] += len(kills)
    report["kills during a checkpoint write"] += sum(k["torn_checkpoint_write"] for k in kills)
    report["runs resumed to identical weights"] += 1


def test_non_finite_or_non_positive_learning_rates_are_recipe_errors(tmp_path):
    from ganforge.errors import RecipeError
    from ganforge.recipe import validate

    for override, problem in (
        ("optim.discriminator.lr=inf", "must be a finite number"),
        ("optim.generator.lr=nan", "must be a finite number"),
        ("optim.generator.lr=0.0", "must be > 0"),
        ("train.grad_clip=inf", "must be a finite number"),
    ):
        with pytest.raises(RecipeError, match=problem):
            validate(tiny_tables(tmp_path, override), None)


def test_weights_that_are_not_finite_are_never_checkpointed(tiny, reliability_report):
    """A finite loss and finite gradients can still leave a weight non-finite (an update that
    overflows it): the checkpoint of that step is not written, and the stop names the newest
    one, which holds the last finite weights."""
    trainer = tiny("train.steps=2", "train.checkpoint_every=2")
    trainer.fit()
    with torch.no_grad():
        next(trainer.discriminator.parameters()).view(-1)[0] = float("inf")
    trainer.step = 3
    with pytest.raises(TrainingStopped) as stop:
        trainer.save_checkpoint()
    assert stop.value.exit_status == NON_FINITE
    message = str(stop.value)
    assert "at step 3 the weights are not finite (discriminator." in message
    assert "step_000002, holds the last finite weights" in message
    assert [p.name for p in list_checkpoints(trainer.run_dir)] == ["step_000002"]
    kept = latest_checkpoint(trainer.run_dir).tensors("models")
    assert all(torch.isfinite(t).all() for t in kept.values() if t.is_floating_point())
    reliability_report["non-finite steps"]["non-finite weights refused a checkpoint"] += 1


# --------------------------------------------------------------------------- one run per folder


def test_a_second_run_on_a_busy_run_directory_stops_touching_nothing(
    tmp_path, capsys, reliability_report
):
    """Started twice by mistake (or a job submitted again): the second run gets one message
    and exit 2 and leaves the first's files alone; a killed first run frees the folder."""
    recipe = write_recipe(tmp_path, "train.steps=100000", "train.log_every=1")
    first = start_logging_run(tmp_path, recipe)
    run_dir = tmp_path / "run"
    first.send_signal(signal.SIGSTOP)  # frozen: nothing it owns changes while we look
    try:
        before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        tries = ([recipe], [recipe, "train.resume=never"], [recipe, "run.seed=7"])
        # Refused before any costly work: once after 72 s of clustering the data.
        for argv in (*tries, [recipe, "data.clusters=4"]):
            assert main(argv) == 2, argv
            out, err = capsys.readouterr()
            assert f"another run is using {run_dir}" in err and "Traceback" not in err, err
            assert "k-means" not in out + err
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
        assert "seed = 0" in (run_dir / "recipe.toml").read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # SIGKILL left no lock behind: the next run takes the folder.
    assert main([recipe, "train.steps=1", "train.resume=never"]) == 0
    assert (run_dir / "generator.safetensors").exists()
    reliability_report["one run per folder"]["second runs refused"] += 3


def test_runs_one_after_another_on_one_folder_each_take_it(tiny):
    first = tiny("train.steps=2")
    first.fit()  # a finished run frees its folder
    second = tiny("train.steps=3")
    second.fit()
    assert second.start_message.startswith("resumed from")


# --------------------------------------------------------------------------- damaged run files


def test_a_torn_last_log_line_is_skipped_and_other_damage_is_one_message(
    tmp_path, tiny, capsys, reliability_report
):
    trainer = tiny("train.steps=2", "train.log_every=1", "train.checkpoint_every=1")
    trainer.fit()
    log = trainer.run_dir / "metrics.jsonl"
    good = log.read_bytes()
    # A kill while writing a line: resume and `ganforge report` skip it, with a warning.
    log.write_bytes(good + b'{"step": 3, "d_lo')
    assert main(["report", str(trainer.run_dir)]) == 0
    assert "the last line is cut short" in capsys.readouterr().err
    resumed = tiny("train.steps=3", "train.log_every=1")
    resumed.fit()
    assert [r["step"] for r in read_metrics(trainer.run_dir)] == [1, 2, 3]
    # Damage before the last line: one message, exit 2, and the log is left as it was.
    for damage in (b'{"step": "two"}\n', b"\xff\xfe not text\n", b"[1, 2]\n"):
        broken = damage + log.read_bytes()
        log.write_bytes(broken)
        assert main(["report", str(trainer.run_dir)]) == 2
        err = capsys.readouterr().err
        assert "metrics.jsonl is damaged at line 1" in err and "Traceback" not in err, err
        recipe = write_recipe(tmp_path, "train.steps=4")
        before = (trainer.run_dir / "recipe.toml").read_bytes()
        assert main([recipe]) == 2
        assert "damaged at line 1" in capsys.readouterr().err
        assert log.read_bytes() == broken  # nothing cut, nothing rewritten
        assert (trainer.run_dir / "recipe.toml").read_bytes() == before
        log.write_bytes(broken[len(damage) :])
    reliability_report["damaged run files"]["damaged metrics logs"] += 4


def test_a_run_folder_recipe_that_is_not_utf8_does_not_stop_the_report(tiny, capsys):
    trainer = tiny("train.steps=1")
    trainer.fit()
    (trainer.run_dir / "recipe.toml").write_bytes(b'[run]\nname = "\xff"\n')
    assert main(["report", str(trainer.run_dir)]) == 0
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------- plugin faults


class FailingHook:
    """A plugin whose lifecycle hook ``hook`` raises at ``step`` (or at once)."""

    def __init__(self, hook: str, step: int = 0):
        self.hook, self.step = hook, step

    def _maybe_fail(self, hook: str, step: int = 0) -> None:
        if hook == self.hook and step >= self.step:
            raise RuntimeError(f"{hook} broke")

    @ganforge.hookimpl
    def ganforge_run_start(self, run):
        self._maybe_fail("run_start")

    @ganforge.hookimpl
    def ganforge_log(self, run, step, values):
        self._maybe_fail("log", step)

    @ganforge.hookimpl
    def ganforge_checkpoint(self, run, step, path):
        self._maybe_fail("checkpoint", step)

    @ganforge.hookimpl
    def ganforge_run_end(self, run, step, export_path):
        self._maybe_fail("run_end")


@pytest.mark.parametrize("hook", ["log", "checkpoint"])
def test_a_failing_hook_during_training_stops_after_writing_the_checkpoint(
    tiny, hook, reliability_report
):
    """A raising `log` hook once killed the run before its checkpoint (10 steps lost): now the
    run stops at that step with its checkpoint written, and one message names the plugin."""
    settings = ("train.steps=20", "train.log_every=2", "train.checkpoint_every=3")
    trainer = tiny(*settings, extra=[("broken", FailingHook(hook, step=4))])
    with pytest.raises(ganforge.errors.PluginError) as failed:
        trainer.fit()
    message = str(failed.value)
    assert "plugin 'broken'" in message and f"failed in ganforge_{hook}" in message
    assert f"{hook} broke" in message and "GANFORGE_DISABLE_PLUGINS=broken" in message
    stopped = 4 if hook == "log" else 6  # the log hook fails at step 4; checkpoints: 3, 6
    assert trainer.step == stopped and f"stopped at step {stopped}" in message
    assert list_checkpoints(trainer.run_dir)[-1].name == f"step_{stopped:06d}"
    assert tiny(*settings).step == stopped  # the same command continues it
    reliability_report["plugin faults"][f"raising {hook} hooks"] += 1


@pytest.mark.parametrize("hook", ["run_start", "run_end"])
def test_a_failing_hook_around_training_is_one_message_exit_2(tmp_path, capsys, hook, monkeypatch):
    recipe = write_recipe(tmp_path, "train.steps=2")
    real = ganforge.plugins.Plugins.__init__

    def with_broken(self, *args, extra=(), **kwargs):
        real(self, *args, extra=[*extra, ("broken", FailingHook(hook))], **kwargs)

    monkeypatch.setattr(ganforge.plugins.Plugins, "__init__", with_broken)
    assert main([recipe]) == 2
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and f"{hook} broke" in err and "Traceback" not in err
    exported = (tmp_path / "run" / "generator.safetensors").exists()
    assert exported == (hook == "run_end")  # run_end comes after the export
    assert main([recipe]) == 2  # the folder was released: the same failure, not a busy folder
    assert f"{hook} broke" in capsys.readouterr().err


class BrokenComponents:
    """A generator factory that fails with a RuntimeError, and one without latent_shape."""

    @ganforge.hookimpl
    def ganforge_register_generators(self, register):
        def crashing(*, resolution, channels, num_classes=0):
            raise RuntimeError("CUDA out of memory (simulated)")

        def shapeless(*, resolution, channels, num_classes=0):
            return torch.nn.Linear(2, 2)

        register("crashing", crashing)
        register("shapeless", shapeless)


class ExitingRegistration:
    @ganforge.hookimpl
    def ganforge_register_losses(self, register):
        raise SystemExit(0)


def test_plugin_faults_outside_registration_name_the_plugin(tmp_path, capsys):
    from ganforge.errors import PluginError
    from ganforge.plugins import Plugins

    extra = [("broken", BrokenComponents())]
    for name, problem in (
        ("crashing", "failed to build: RuntimeError: CUDA out of memory"),
        ("shapeless", "has no valid latent_shape"),
    ):
        with pytest.raises(PluginError, match=problem) as failed:
            from conftest import make_trainer

            make_trainer(tmp_path, f"generator.name={name}", extra=extra)
        assert "plugin 'broken'" in str(failed.value)
    # SystemExit(0) in a registration hook once made `validate` exit 0 with no output.
    with pytest.raises(PluginError, match="plugin 'quitter'.*SystemExit"):
        Plugins(extra=[("quitter", ExitingRegistration())]).registry  # noqa: B018


class FakeEntryPoint:
    def __init__(self, name: str, value: str, dist: str):
        self.name, self.value = name, value
        self.dist = type("Dist", (), {"metadata": {"Name": dist}, "version": "1.0"})()

    def load(self):
        raise AssertionError("a colliding plugin must not be loaded")


def test_a_second_distribution_using_a_builtin_plugin_name_is_an_error(monkeypatch):
    from importlib.metadata import entry_points

    import ganforge.plugins
    from ganforge.errors import PluginError

    real = list(entry_points(group="ganforge"))
    impostor = FakeEntryPoint("dcgan", "evil.dcgan", "ganforge-evil")
    monkeypatch.setattr(ganforge.plugins, "entry_points", lambda group: [*real, impostor])
    with pytest.raises(PluginError) as failed:
        ganforge.plugins.Plugins()
    message = str(failed.value)
    assert "two plugins are named 'dcgan'" in message
    assert "ganforge_plugins.dcgan" in message and "ganforge-evil (evil.dcgan)" in message


DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_a_full_disk_as_safetensors_reports_it_is_one_message_for_every_write(
    tmp_path, capsys, monkeypatch, reliability_report
):
    """safetensors raises its own SafetensorError for a full disk (seen on a 1 MB tmpfs), not
    an OSError: checkpoints, the export, sample grids and the metrics log all end in exit 2
    and one message naming the folder and the newest intact checkpoint."""
    from safetensors import SafetensorError

    import ganforge.export
    import ganforge.trainer

    recipe = write_recipe(tmp_path, "train.steps=4", "train.checkpoint_every=2")

    def full(*args, **kwargs):
        raise SafetensorError(DISK_FULL)

    def full_os(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cases = [
        (ganforge.checkpoint, "save_file", full, "could not write checkpoint"),
        (ganforge.export, "save_file", full, "could not write in the run directory"),
        (ganforge.outputs, "append_jsonl", full_os, "could not write in the run directory"),
    ]
    for module, name, failing, message in cases:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, failing)
        assert main([recipe, "train.resume=never"]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "No space left on device" in err, (name, err)
        assert "Traceback" not in err and str(tmp_path / "run") in err, err
        monkeypatch.setattr(module, name, real)
    # A checkpoint exists by the export: the message says it is intact.
    monkeypatch.setattr(ganforge.export, "save_file", full)
    assert main([recipe]) == 2
    assert "step_000004, is intact" in capsys.readouterr().err
    reliability_report["disk full"]["write paths failing as safetensors does"] += 4


# --------------------------------------------------------------------------- checkpoint state


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(step=s["step"] - 1),  # one flipped bit in the step
        lambda s: s["optimizers"]["generator"]["param_groups"][0].update(lr=0.5),
        lambda s: s.update(step=-5),
        lambda s: s["sampler"].update(offset=10**15),
        lambda s: s.update(skipped_steps="3"),
    ],
    ids=["step", "learning rate", "negative step", "huge offset", "wrong type"],
)
@pytest.mark.parametrize("sealed", [True, False], ids=["checksummed", "older, no checksum"])
def test_a_damaged_state_json_falls_back_to_the_previous_checkpoint(
    tiny, capsys, edit, sealed, reliability_report
):
    """state.json is covered by its own checksum (and its fields are checked, for checkpoints
    written before it had one): damage is detected before anything is moved or cut, and the
    run resumes from the previous good checkpoint, exactly as for damaged tensors."""
    from ganforge.checkpoint import STATE_DIGEST

    settings = ("train.checkpoint_every=2", "train.keep_checkpoints=0", "train.log_every=1")
    tiny("train.steps=4", *settings).fit()
    newest = tiny("train.steps=4").run_dir / "checkpoints" / "step_000004"
    state = json.loads((newest / "state.json").read_text())
    if not sealed:
        del state[STATE_DIGEST]
    damaged = json.loads(json.dumps(state))
    edit(damaged)
    (newest / "state.json").write_text(json.dumps(damaged))
    log = (newest.parent.parent / "metrics.jsonl").read_text()
    resumed = tiny("train.steps=6", *settings)
    if not sealed and damaged["optimizers"] != state["optimizers"]:
        # Without a checksum a plausible learning rate cannot be told from a real one: it
        # resumes (this is what the checksum adds).
        assert resumed.step == 4
        return
    assert resumed.step == 2, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step_000004/state.json is damaged" in err
    # Nothing was moved or cut while building the run; its fit sets the damaged one aside.
    assert (newest / "state.json").exists()
    assert (newest.parent.parent / "metrics.jsonl").read_text() == log
    resumed.fit()
    assert [m["step"] for m in read_metrics(resumed.run_dir)] == [1, 2, 3, 4, 5, 6]
    reliability_report["checkpoint state"]["damaged state.json fell back"] += 1


# --------------------------------------------------------------------------- crafted exports


def rewrite_export(source, target, change, *, seal: bool) -> None:
    """Copy an export with its metadata changed; ``seal``: with a recomputed checksum (a
    crafted file), else as it was (a damaged one)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ganforge.export import METADATA_KEY, metadata_digest

    with safe_open(str(source), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(meta)
    if seal:
        meta["metadata_sha256"] = metadata_digest(meta)
    text = json.dumps(meta) if not isinstance(meta.get("deep"), str) else meta["deep"]
    save_file(tensors, str(target), metadata={METADATA_KEY: text})


CRAFTED = {
    "format_version type": lambda m: m.update(format_version="1"),
    "empty latent shape": lambda m: m["latent"].update(shape=[]),
    "negative latent shape": lambda m: m["latent"].update(shape=[-4]),
    "unknown prior": lambda m: m["latent"].update(prior="cauchy"),
    "output kind": lambda m: m["output"].update(kind="video"),
    "unhashable name": lambda m: m["generator"].update(name={"a": 1}),
    "num_classes 10**12": lambda m: m.update(num_classes=10**12),
    "negative num_classes": lambda m: m.update(num_classes=-3),
    "NaN label prior": lambda m: m.update(num_classes=2, label_prior=[float("nan"), 1.0]),
    "width 10**6": lambda m: m["generator"]["kwargs"].update(width=10**6),
    "100k-deep JSON": lambda m: m.update(deep="[" * 100_000 + "]" * 100_000),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_or_damaged_export_metadata_is_one_message(tmp_path, tiny, capsys, name):
    trainer = tiny("train.steps=1")
    export = trainer.fit()
    for seal in (False, True):
        target = tmp_path / f"crafted-{seal}.safetensors"
        rewrite_export(export, target, CRAFTED[name], seal=seal)
        assert main(["generate", str(target), "--num", "4", "--out", "g.png"]) == 2, seal
        err = capsys.readouterr().err
        assert str(target) in err and "Traceback" not in err, err
        if not seal and name not in ("100k-deep JSON", "format_version type"):
            assert "its metadata does not match its checksum" in err  # checked before use


# --------------------------------------------------------------------------- upper bounds


@pytest.mark.parametrize(
    "override, problem",
    [
        ("train.batch_size=1000000000", "train.batch_size: must be at most"),
        ("train.sample_count=1000000000", "train.sample_count: must be at most 4,096"),
        ("eval.num=1000000000", "eval.num: must be at most 1,000,000"),
        ("generator.width=1000000", "width = 1000000: must be from 1 to 65,536"),
        ("generator.latent_dim=1000000000", "latent_dim = 1000000000: must be from 1"),
        ('run.name="a\\u0000b"', "run.name: must not hold control characters"),
        ('run.out_dir="."', "run.out_dir: must be a folder of its own"),
        ('run.out_dir=".."', "run.out_dir: must be a folder of its own"),
    ],
)
def test_sizes_beyond_reason_are_one_message_before_anything_is_allocated(
    tmp_path, capsys, override, problem
):
    recipe = write_recipe(tmp_path)
    assert main([recipe, override, "train.steps=1"]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err, err


def test_a_deeply_nested_recipe_is_one_message(tmp_path, capsys):
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert main(["validate", str(deep)]) == 2
    err = capsys.readouterr().err
    assert "invalid TOML" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--num", str(10**10)], "argument --num: must be at most 100,000"),
        (["--seed", str(2**70)], "argument --seed: must be from 0 to"),
        (["--device", "privateuseone"], "--device 'privateuseone' cannot be used"),
        (["--device", "banana"], "--device 'banana'"),
    ],
)
def test_generate_options_beyond_reason_are_one_message(tiny, tmp_path, capsys, args, problem):
    export = tiny("train.steps=1").fit()
    assert main(["generate", str(export), "--out", str(tmp_path / "g.png"), *args]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err, err


def test_model_paths_that_are_no_export_say_what_they_are(tiny, tmp_path, capsys):
    export = tiny("train.steps=1").fit()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    unreadable = tmp_path / "locked.safetensors"
    unreadable.write_bytes(export.read_bytes())
    unreadable.chmod(0)
    cases = [(fifo, "is not a regular file"), (tmp_path, "is a folder")]
    if os.geteuid() != 0:  # root reads anything
        cases.append((unreadable, "permission denied"))
    if Path("/dev/zero").exists():
        cases.append((Path("/dev/zero"), "is not a regular file"))
    for model, problem in cases:
        assert main(["generate", str(model), "--out", str(tmp_path / "g.png")]) == 2
        err = capsys.readouterr().err
        assert problem in err and "Traceback" not in err, (model, err)


def test_an_export_with_weights_that_are_not_finite_says_so(tiny, tmp_path, capsys):
    """A diverged run's export once generated a black grid, and `eval` printed NaN, exit 0."""
    export = tiny("train.steps=1").fit()
    broken = tmp_path / "nan.safetensors"
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ganforge.export import METADATA_KEY, metadata_digest, tensors_digest

    with safe_open(str(export), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[name][0] = float("nan")
    meta["tensors_sha256"] = tensors_digest(tensors)
    meta["metadata_sha256"] = metadata_digest(meta)
    save_file(tensors, str(broken), metadata={METADATA_KEY: json.dumps(meta)})
    for command in (
        ["generate", str(broken), "--out", str(tmp_path / "g.png")],
        ["eval", str(broken), "--data", write_recipe(tmp_path), "--num", "20"],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "holds weights that are not finite" in err and name in err, err


class FailingOnRecord:
    """A plugin whose ``ganforge_log`` raises on the first record of one kind: an evaluation's
    (``eval/...`` values) or a training step's."""

    def __init__(self, evaluation: bool):
        self.evaluation = evaluation

    @ganforge.hookimpl
    def ganforge_log(self, run, step, values):
        if any(k.startswith("eval/") for k in values) == self.evaluation:
            raise RuntimeError(f"log broke at step {step}")


@pytest.mark.parametrize("evaluation", [True, False], ids=["eval record", "training record"])
def test_a_failing_log_hook_stops_the_same_way_from_an_evaluation_or_a_step(
    tiny, evaluation, one_thread
):
    """The eval-time ``ganforge_log`` once escaped before the step's checkpoint was written;
    both records now go through one failure rule: checkpoint first, then one message."""
    toy = [o for o in TOY_EVAL_RUN if not o.startswith(("train.steps", "eval.every"))]
    # Step 3 is logged (log_every 3) and evaluated (eval.every 3), and no checkpoint step.
    settings = (*toy, "train.steps=9", "train.log_every=3", "eval.every=3")
    trainer = tiny(
        *settings, "train.checkpoint_every=0", extra=[("broken", FailingOnRecord(evaluation))]
    )
    with pytest.raises(ganforge.errors.PluginError) as failed:
        trainer.fit()
    message = str(failed.value)
    assert "plugin 'broken'" in message and "failed in ganforge_log" in message
    assert "log broke at step 3" in message and "stopped at step 3" in message
    assert trainer.step == 3
    assert [p.name for p in list_checkpoints(trainer.run_dir)] == ["step_000003"]
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [3, 3]  # the step's log and its eval, both kept
    assert tiny(*settings).step == 3  # the same command continues from it


def test_a_run_directory_on_a_file_system_without_locks_trains_with_a_warning(
    tiny, monkeypatch, capsys
):
    """NFS without lockd, Lustre without -o flock: flock fails with ENOLCK, which was reported
    as "another run is using" the folder, and no run could start there."""
    import errno
    import os

    import ganforge.runlock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(ganforge.runlock.fcntl, "flock", no_locks)
    trainer = tiny()
    trainer.fit()
    assert trainer.step == 2
    err = capsys.readouterr().err
    assert "cannot be taken" in err and "another run is using" not in err
