"""Which backend a launch runs: the recipe's [distributed] table and the launcher's flags must
agree, and what ganforge would not do exactly is refused with one message."""

from __future__ import annotations

import json
import re

import pytest

from ganforge.distributed import Launch, plan_launch
from ganforge.errors import GanforgeError, RecipeError
from ganforge.recipe import validate

AUTO = {"backend": "auto", "zero_stage": 0}
DEEPSPEED = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


def plan(env=None, grad_clip=0.0, precision="auto", **settings):
    return plan_launch({**AUTO, **settings}, grad_clip, precision, env or {})


def test_the_launcher_decides_when_the_recipe_says_auto():
    assert plan() == Launch("ddp")
    assert plan(DEEPSPEED) == Launch("deepspeed", 3)
    assert plan({"ACCELERATE_USE_DEEPSPEED": "true"}) == Launch("deepspeed", 2)  # no stage: 2
    assert plan({"ACCELERATE_USE_FSDP": "true"}) == Launch("fsdp")
    # torchrun (no launcher flags): the recipe switch alone.
    assert plan(backend="deepspeed", zero_stage=1) == Launch("deepspeed", 1)
    assert plan(backend="fsdp") == Launch("fsdp")
    # An explicit value that agrees is fine.
    assert plan(DEEPSPEED, backend="deepspeed", zero_stage=3) == Launch("deepspeed", 3)


@pytest.mark.parametrize(
    "env, settings, grad_clip, message",
    [
        (DEEPSPEED, {"backend": "ddp"}, 0.0, 'the launcher asks for deepspeed.*"ddp"'),
        ({"ACCELERATE_USE_FSDP": "true"}, {"backend": "deepspeed"}, 0.0, "asks for fsdp"),
        (DEEPSPEED, {"zero_stage": 2}, 0.0, "ZeRO stage 3, the recipe for .*zero_stage = 2"),
        ({**DEEPSPEED, "ACCELERATE_GRADIENT_CLIPPING": "1.0"}, {}, 0.0, "clips gradients at"),
        ({**DEEPSPEED, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, {}, 0.0, "accumulation"),
        ({**DEEPSPEED, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, {}, 0.0, "offload"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}, {}, 0.0, "offload"),
        (
            {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "0"},
            {},
            0.0,
            "ZeRO stage 0",
        ),
    ],
)
def test_a_launch_ganforge_would_not_run_exactly_is_one_message(env, settings, grad_clip, message):
    with pytest.raises(GanforgeError, match=message):
        plan(env, grad_clip, **settings)


def test_the_launchers_clipping_is_accepted_when_it_is_the_recipes():
    env = {**DEEPSPEED, "ACCELERATE_GRADIENT_CLIPPING": "1.0"}
    assert plan(env, grad_clip=1.0) == Launch("deepspeed", 3)


def test_a_deepspeed_config_file_may_not_bring_its_own_optimizer(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 1},
                "optimizer": {"type": "Adam", "params": {"lr": 1e-3}},
                "scheduler": {"type": "WarmupLR"},
            }
        )
    )
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config)}
    with pytest.raises(GanforgeError) as caught:
        plan(env)
    assert "'optimizer' is not used" in str(caught.value)
    assert "'scheduler' is not used" in str(caught.value)
    config.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert plan(env) == Launch("deepspeed", 1)


def test_the_distributed_table_is_validated(tmp_path):
    from conftest import tiny_tables

    for overrides, key in (
        (["distributed.backend=horovod"], "distributed.backend"),
        (["distributed.zero_stage=4"], "distributed.zero_stage"),
    ):
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            validate(tiny_tables(tmp_path, *overrides), None)


def test_fp16_under_deepspeed_or_fsdp_is_refused_from_the_recipe_or_the_launcher():
    with pytest.raises(GanforgeError, match="fp16 under fsdp has not been checked"):
        plan(backend="fsdp", precision="fp16")
    with pytest.raises(GanforgeError, match="fp16 under deepspeed has not been checked"):
        plan({**DEEPSPEED, "ACCELERATE_MIXED_PRECISION": "fp16"})
    assert plan({**DEEPSPEED, "ACCELERATE_MIXED_PRECISION": "bf16"}) == Launch("deepspeed", 3)
    assert plan(precision="fp16") == Launch("ddp")  # DDP's fp16 has its loss scaler


def test_a_refused_launch_stops_before_anything_is_built(tiny):
    with pytest.raises(GanforgeError, match="fp16 under fsdp has not been checked"):
        tiny("distributed.backend=fsdp", "run.mixed_precision=fp16")


@pytest.mark.parametrize(
    "argv, asked",
    [
        (["/v/bin/python", "/v/bin/accelerate", "launch", "--cpu", "--num_processes", "2"], 2),
        (["accelerate", "launch", "--num_processes=4", "-m", "ganforge", "r.toml"], 4),
        (["accelerate", "launch", "-m", "ganforge", "r.toml", "--num_processes", "2"], 0),
        (["accelerate", "launch", "--num_processes", "1", "-m", "ganforge"], 1),
        (["python", "-m", "ganforge", "--num_processes", "2"], 0),
        (["torchrun", "--nproc_per_node", "2", "train.py"], 0),
        ([], 0),
    ],
)
def test_what_accelerate_launch_was_asked_for_is_read_from_its_command(argv, asked):
    from ganforge.distributed import processes_asked_for

    assert processes_asked_for(argv) == asked


def test_accelerate_launch_starting_one_process_of_two_says_how_to_get_two(tmp_path):
    """Without GPUs, `accelerate launch --cpu --num_processes 2` starts one process and tells
    it nothing: ganforge reads the launcher's command line and says so."""
    import shutil
    import sys
    from pathlib import Path

    from conftest import run_command, tiny_tables
    from ganforge.recipe import dump_toml

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(dump_toml(tiny_tables(tmp_path, "train.steps=1")), encoding="utf-8")
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    command = [launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ganforge"]
    done = run_command([*command, str(recipe)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "asked for 2 processes but started one" in done.stderr, done.stderr
    assert "accelerate launch --multi_gpu --num_processes 2" in done.stderr
    assert "1 process(es)" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("config", "refused"),
    [
        ({"fp16": {"enabled": True}}, "enables fp16"),  # once trained in float32, rc 0
        ({"bf16": {"enabled": True}}, "enables bf16, the launch does not"),
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps = 4 is not used"),
        ({"train_batch_size": 256}, "train_batch_size = 256 is not used"),
        ({"gradient_clipping": "abc"}, "gradient_clipping is 'abc', not a number"),
        ([1, 2], "is not a JSON object"),  # these three were tracebacks
        ({"zero_optimization": None}, "zero_optimization is None, not an object"),
    ],
)
def test_every_deepspeed_config_key_is_honoured_refused_or_listed_as_unused(
    tmp_path, config, refused
):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}
    with pytest.raises(GanforgeError, match=re.escape(refused)):
        plan(env)


def test_deepspeed_config_keys_ganforge_does_not_use_are_listed(tmp_path, capsys):
    path = tmp_path / "ds.json"
    config = {
        "zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 5e8},
        "frobnicate": 1,
        "bf16": {"enabled": True},
        "gradient_clipping": 0.0,
        "train_batch_size": "auto",
    }
    path.write_text(json.dumps(config))
    env = {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path),
        "ACCELERATE_MIXED_PRECISION": "bf16",
    }
    assert plan(env) == Launch("deepspeed", 2)
    said = capsys.readouterr().err
    for key in ("frobnicate", "zero_optimization.overlap_comm", "zero_optimization.reduce_bucket"):
        assert key in said
    assert "bf16," not in said and "gradient_clipping" not in said  # honoured, not listed


def test_a_deepspeed_offload_that_is_not_an_object_is_one_message(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": None}}))
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}
    with pytest.raises(GanforgeError, match="offload_optimizer is None, not an object"):
        plan(env)
