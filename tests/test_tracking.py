"""Experiment trackers: ``[run] log_with`` through Accelerate, TensorBoard read back offline."""

from __future__ import annotations

import io
import json
import shutil
import sys

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_command, tiny_tables
from ganforge.errors import GanforgeError, RecipeError
from ganforge.recipe import validate
from ganforge.testing import TINY_RECIPE

TENSORBOARD = 'run.log_with=["tensorboard"]'


def read_events(run_dir):
    """Every scalar and image TensorBoard would show for the run (its main event stream)."""
    events = EventAccumulator(
        str(run_dir / "logs" / "tiny"), size_guidance={"scalars": 0, "images": 0}
    )
    events.Reload()
    return events


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_logged_value_and_the_sample_grids(run_recipe, one_thread):
    run_dir = run_recipe(
        TINY_RECIPE, TENSORBOARD, "train.log_every=2", "train.sample_every=3", steps=6
    )
    events = read_events(run_dir)
    logged = [r for r in metrics(run_dir) if "d_loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_accuracy", "grad_norm_g", "kimg"):
        scalars = events.Scalars(key)
        assert [e.step for e in scalars] == [2, 4, 6], key
        for event, record in zip(scalars, logged, strict=True):
            assert event.value == pytest.approx(record[key], rel=1e-6, abs=1e-6), key
    # The sample grids, at the sample steps and at the end, as the PNGs in samples/.
    images = events.Images("samples")
    assert [e.step for e in images] == [3, 6]
    for event in images:
        shown = Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")
        written = Image.open(run_dir / "samples" / f"step_{event.step:06d}.png").convert("RGB")
        assert shown.size == written.size
        assert shown.tobytes() == written.tobytes()


def test_tensorboard_gets_evaluations(run_recipe, one_thread):
    from conftest import TOY_EVAL_RUN

    run_dir = run_recipe(TINY_RECIPE, *TOY_EVAL_RUN, TENSORBOARD, steps=2)
    evals = [r for r in metrics(run_dir) if any(k.startswith("eval/") for k in r)]
    assert evals, "the toy run evaluates at its end"
    for key, value in evals[-1].items():
        if key != "step":
            (event,) = read_events(run_dir).Scalars(key)
            assert (event.step, event.value) == (2, pytest.approx(value, rel=1e-6))


def test_resume_purges_what_was_logged_after_the_checkpoint(run_recipe, one_thread):
    """A run that went past its last checkpoint and resumes shows one curve: TensorBoard drops
    the first attempt's values after the checkpoint step, as metrics.jsonl is cut there."""
    args = (TINY_RECIPE, TENSORBOARD, "train.log_every=1", "train.checkpoint_every=3")
    run_dir = run_recipe(*args, steps=5)
    # The run died after logging step 5 but before its final checkpoint.
    shutil.rmtree(run_dir / "checkpoints" / "step_000005")
    first = {r["step"]: r["d_loss"] for r in metrics(run_dir) if "d_loss" in r}
    run_recipe(*args, steps=6)
    steps = [e.step for e in read_events(run_dir).Scalars("d_loss")]
    assert steps == [1, 2, 3, 4, 5, 6]
    second = {e.step: e.value for e in read_events(run_dir).Scalars("d_loss")}
    # Exact resume: the retrained steps 4 and 5 repeat the first attempt's values.
    for step in (4, 5):
        assert second[step] == pytest.approx(first[step], rel=1e-6)


def test_recipe_names_trackers_checked(tmp_path):
    tables = tiny_tables(tmp_path, 'run.log_with=["tensorbaord", "wandb"]')
    with pytest.raises(RecipeError) as err:
        validate(tables, None)
    assert "run.log_with" in str(err.value)
    assert "did you mean 'tensorboard'" in str(err.value)
    tables = tiny_tables(tmp_path, 'run.log_with="tensorboard"')
    with pytest.raises(RecipeError, match="run.log_with: expected a list"):
        validate(tables, None)
    tables = tiny_tables(tmp_path, "run.tracker_options.wandb=3")
    with pytest.raises(RecipeError, match="wandb must be a table"):
        validate(tables, None)


def test_a_missing_tracker_package_is_one_message_before_training(tmp_path, monkeypatch):
    """wandb is not installed here: the run stops at once with the pip command, no traceback."""
    from accelerate.utils import imports

    if imports.is_wandb_available():
        pytest.skip("wandb is installed in this environment")
    from ganforge.tracking import check_available

    with pytest.raises(GanforgeError, match="pip install wandb"):
        check_available(["tensorboard", "wandb"])
    recipe = tmp_path / "r.toml"
    from ganforge.recipe import dump_toml

    recipe.write_text(dump_toml(tiny_tables(tmp_path, 'run.log_with=["wandb"]')))
    done = run_command([sys.executable, "-m", "ganforge", str(recipe)], tmp_path)
    assert done.returncode == 2
    assert "pip install wandb" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
