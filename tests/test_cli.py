"""The documented commands, run as a user runs them: in subprocesses."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import run_command

QUICK = [
    "train.steps=3",
    "train.log_every=1",
    "generator.width=8",
    "discriminator.width=8",
    "train.batch_size=16",
]


def check_run_dir(run_dir: Path, steps: int) -> None:
    assert (run_dir / "generator.safetensors").stat().st_size > 0
    assert (run_dir / "samples" / f"step_{steps:06d}.png").exists()
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert (run_dir / "recipe.toml").exists()


def test_python_dash_m_trains_the_quickstart(tmp_path):
    out = tmp_path / "qs"
    done = run_command(
        [sys.executable, "-m", "ganforge", "recipes/quickstart.toml", *QUICK, f"run.out_dir={out}"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    check_run_dir(out, 3)
    assert "global batch 16 = 16 per process" in done.stdout
    assert "exported" in done.stdout


def test_console_script_and_subcommand(tmp_path):
    script = shutil.which("ganforge", path=str(Path(sys.executable).parent))
    assert script, "the ganforge console script is installed"
    out = tmp_path / "qs"
    done = run_command(
        [script, "train", "recipes/quickstart.toml", *QUICK, f"run.out_dir={out}"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    check_run_dir(out, 3)


def test_accelerate_launch_runs_the_quickstart(tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    out = tmp_path / "acc"
    done = run_command(
        [
            launcher,
            "launch",
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "ganforge",
            "recipes/quickstart.toml",
            *QUICK,
            f"run.out_dir={out}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    check_run_dir(out, 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (["recipes/quickstart.toml", "data.name=nope"], "unknown dataset 'nope'"),
        (["recipes/quickstart.toml", "train.batch_size=0"], "train.batch_size: must be > 0"),
        (
            ["recipes/quickstart.toml", "data.name=hf", "data.path=/no/such/dir", "train.steps=1"],
            "no such file or directory",
        ),
    ],
)
def test_user_mistakes_exit_2_without_traceback(bad, message, tmp_path):
    done = run_command(
        [sys.executable, "-m", "ganforge", *bad, f"run.out_dir={tmp_path / 'r'}"], tmp_path
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_bf16_mixed_precision_trains_on_the_cpu(tmp_path):
    # With channels_last, as recipes/fashion_mnist.toml: under bf16 a CPU gets no layout warning.
    out = tmp_path / "bf16"
    done = run_command(
        [
            sys.executable,
            "-m",
            "ganforge",
            "recipes/quickstart.toml",
            *QUICK,
            "run.mixed_precision=bf16",
            "train.channels_last=true",
            f"run.out_dir={out}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "mixed precision bf16" in done.stdout
    assert "channels_last" not in done.stdout + done.stderr
    check_run_dir(out, 3)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped_steps"] == 0 and abs(last["d_loss"]) < 100


def test_validate_and_help_do_not_import_heavy_libraries(tmp_path):
    probe = (
        "import sys; from ganforge.cli import main; "
        "assert main(['validate', 'recipes/dcgan.toml']) == 0; main(['--help']); "
        "heavy = [m for m in ('datasets', 'accelerate') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    done = run_command([sys.executable, "-c", probe], tmp_path)
    assert done.returncode == 0, done.stderr
