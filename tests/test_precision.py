"""Mixed precision for every loss and regularizer: bf16 on the CPU here; fp16 (with its loss
scaler) only on a GPU, where the test checks that fp16 was really used."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import ROOT, run_command

PENALTIES = {"reg=gradient_penalty", "reg=r1", "reg=r2"}  # take gradients w.r.t. the inputs


def run_precision(tmp_path, mixed_precision: str) -> dict:
    # One process per precision: Accelerate allows one mixed-precision mode per process.
    worker = ROOT / "tests" / "launch_worker.py"
    done = run_command(
        [sys.executable, str(worker), "precision", str(tmp_path / "out"), mixed_precision],
        tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "out" / f"precision_{mixed_precision}.json").read_text())


def check(results: dict, low: str) -> None:
    assert len(results) == 11  # 7 losses, 4 regularizers
    for name, run in results.items():
        outputs = {output for _, output in run["passes"]}
        # The critic runs in low precision; penalties on input gradients run their critic
        # pass in float32 with autocast off, on float32 inputs.
        expected = {f"torch.{low}", "torch.float32"} if name in PENALTIES else {f"torch.{low}"}
        assert outputs == expected, name
        assert all(inputs == "torch.float32" for inputs, _ in run["passes"]), name
        assert run["skipped"] == 0 and run["g_changed"], name
        assert abs(run["d_loss"]) < 1e3 and abs(run["g_loss"]) < 1e3, name


def test_bf16_trains_every_loss_and_regularizer_on_the_cpu(tmp_path):
    results = run_precision(tmp_path, "bf16")
    check(results, "bfloat16")
    assert not any(run["scaler"] for run in results.values())  # bf16 needs no loss scaling


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs a GPU (the CPU runs fp32)")
def test_fp16_trains_every_loss_and_regularizer_with_a_loss_scaler(tmp_path):
    results = run_precision(tmp_path, "fp16")
    check(results, "float16")  # fp16 really used: the CPU would have given float32
    assert all(run["scaler"] and run["device"].startswith("cuda") for run in results.values())


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_says_it_is_slower(tmp_path, native):
    from conftest import tiny_tables
    from ganforge.recipe import dump_toml

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(dump_toml(tiny_tables(tmp_path, "train.steps=1", "run.mixed_precision=bf16")))
    code = (
        "import sys, ganforge.distributed as d; "
        f"d.native_cpu_bf16 = lambda: {native}; "
        "from ganforge.cli import main; sys.exit(main([sys.argv[1]]))"
    )
    done = run_command([sys.executable, "-c", code, str(recipe)], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    warned = "no native bfloat16 instructions" in done.stderr
    assert warned is not native
    assert "mixed precision bf16" in done.stdout + done.stderr  # the run still trains in bf16


def test_bf16_if_native_picks_bf16_only_where_the_cpu_runs_it_natively(
    monkeypatch, run_recipe, tiny_recipe, capsys
):
    from ganforge import distributed

    env = {"ACCELERATE_USE_CPU": "1"}
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(distributed, "native_cpu_bf16", lambda native=native: native)
        assert distributed.resolve_precision("bf16_if_native", env) == expected
        for explicit in ("no", "bf16", "fp16", "auto"):  # an explicit choice is kept
            assert distributed.resolve_precision(explicit, env) == explicit
    monkeypatch.setattr(distributed, "native_cpu_bf16", lambda: False)
    run_recipe(tiny_recipe, "run.mixed_precision=bf16_if_native", steps=1)
    out = capsys.readouterr().out
    assert 'run.mixed_precision = "bf16_if_native": float32' in out
    assert "mixed precision no" in out
