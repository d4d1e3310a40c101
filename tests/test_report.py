"""A run's record a user can open: curves.png and a self-contained report.html, written at the
end of fit and again by ``ganforge report RUN_DIR``."""

from __future__ import annotations

import html
import json
import math
import re

import pytest
from PIL import Image

from conftest import TOY_EVAL_RUN
from ganforge.cli import main
from ganforge.report import COLOURS, COLUMNS, MAX_GRIDS, PANEL_SIZE, plot_curves, write_report

DATA_URI = re.compile(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"')


def colours_in(path) -> set[tuple[int, int, int]]:
    with Image.open(path) as picture:
        return {colour for _, colour in picture.convert("RGB").getcolors(1 << 20)}


def test_fit_draws_a_panel_per_group_of_logged_values(tiny, one_thread, capsys):
    trainer = tiny("train.steps=3")
    trainer.fit()
    curves = trainer.run_dir / "curves.png"
    with Image.open(curves) as picture:
        # losses, critic outputs, gradient norms, critic accuracy: two rows of two
        assert picture.size == (PANEL_SIZE[0] * COLUMNS, PANEL_SIZE[1] * 2)
    assert set(COLOURS[:2]) <= colours_in(curves)  # each panel's two lines are drawn
    out = capsys.readouterr().out
    assert f"curves: {curves}" in out and f"report: {trainer.run_dir / 'report.html'}" in out


def test_the_report_is_self_contained(tiny, one_thread):
    trainer = tiny("train.steps=3", "train.sample_every=1")
    trainer.fit()
    page = (trainer.run_dir / "report.html").read_text()
    assert len(DATA_URI.findall(page)) == 1 + 3  # the curves and the grid of each step
    for step in (1, 2, 3):
        assert f"<figcaption>step {step}</figcaption>" in page
    assert html.escape((trainer.run_dir / "recipe.toml").read_text()) in page
    last = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"<td>d_loss</td><td>{last['d_loss']:.6g}</td>" in page
    assert "http://" not in page and "https://" not in page


def test_a_point_run_gets_a_panel_per_eval_metric_and_its_final_eval(tiny, one_thread):
    trainer = tiny(*TOY_EVAL_RUN)
    trainer.fit()
    with Image.open(trainer.run_dir / "curves.png") as picture:
        width, height = picture.size
    evals = [k for k in trainer.outputs.last_eval if k.startswith("eval/")]
    panels = 4 + len(evals)
    assert (width, height) == (PANEL_SIZE[0] * COLUMNS, PANEL_SIZE[1] * math.ceil(panels / 2))
    page = (trainer.run_dir / "report.html").read_text()
    assert "last eval (step 2)" in page and f"<td>{evals[0]}</td>" in page


def test_non_finite_values_are_skipped_and_grids_are_thinned(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    records = [{"step": s, "d_loss": math.nan if s == 2 else 1.0 / s} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for step in range(1, 31):
        Image.new("RGB", (4, 4), (step, 0, 0)).save(run / "samples" / f"step_{step:06d}.png")
    assert COLOURS[0] in colours_in(plot_curves(run))  # the finite values still make a line
    page = write_report(run).read_text()
    steps = [int(s) for s in re.findall(r"<figcaption>step (\d+)</figcaption>", page)]
    assert len(steps) == MAX_GRIDS and steps[0] == 1 and steps[-1] == 30
    assert steps == sorted(set(steps))


def test_the_report_command_rewrites_a_run_and_refuses_another_folder(tiny, capsys, tmp_path):
    trainer = tiny("train.steps=2")
    trainer.fit()
    (trainer.run_dir / "report.html").unlink()
    (trainer.run_dir / "curves.png").unlink()
    capsys.readouterr()
    assert main(["report", str(trainer.run_dir)]) == 0
    for name in ("report.html", "curves.png"):
        assert (trainer.run_dir / name).is_file()
    assert "report.html" in capsys.readouterr().out

    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics.jsonl" in err


def test_the_report_command_refuses_a_missing_folder(capsys):
    assert main(["report", "nowhere"]) == 2
    assert "not a run folder" in capsys.readouterr().err


CHROMIUM = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(tiny, one_thread, tmp_path):
    """The page as a browser shows it, from disk with no network: the inlined curves and sample
    grids are drawn (their exact pixels are on the screenshot)."""
    import shutil
    import subprocess

    browser = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    if browser is None:
        pytest.skip("no headless Chromium installed (apt install chromium-headless-shell)")
    trainer = tiny("train.steps=3", "train.sample_every=1")
    trainer.fit()
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--force-device-scale-factor=1",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            (trainer.run_dir / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), done.stderr[-2000:]
    seen = colours_in(shot)
    assert set(COLOURS[:2]) <= seen  # the curves image, decoded from its data: URI
    grid_colours = colours_in(trainer.run_dir / "samples" / "step_000003.png")
    # A 16 px RGB noise grid has hundreds of colours no other part of the page draws.
    assert len(grid_colours & seen) > 0.9 * len(grid_colours)
