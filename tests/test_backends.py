"""DeepSpeed ZeRO-1/2/3 and FSDP2 on the CPU, on one and two processes, each against the plain
step (one process, no backend) with the same initial weights, data order and latents: what
they train, how they resume, skip a poisoned batch, and move checkpoints between backends and
numbers of processes. Launched as users launch them (`accelerate launch --use_deepspeed`,
`accelerate launch --config_file configs/accelerate/fsdp.yaml`, `torchrun`, plain `python`)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import free_port

from conftest import ROOT, run_command

sys.path.insert(0, str(ROOT / "tests"))
import launch_worker  # noqa: E402

pytest.importorskip("deepspeed", reason='DeepSpeed is installed by pip install -e ".[deepspeed]"')

WORKER = str(ROOT / "tests" / "launch_worker.py")
STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
NAMES = {"zero1": "DeepSpeed ZeRO-1", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}
NAMES["fsdp"] = "FSDP2"


#: ZeRO-3 runs no penalties (they backward twice through released parameters): its cases
#: drop the recipe's gradient penalty and R1, and so does their plain reference.
PENALTIES = {"zero3": ("penalties=none",)}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The plain step, one process, with and without penalties: 4 steps, whole state, and
    the step-2 checkpoint."""
    made = {}

    def reference(overrides: tuple[str, ...]):
        if overrides not in made:
            out = tmp_path_factory.mktemp("plain")
            trainer = launch_worker.train_for(out / "straight", 4, *overrides)
            assert trainer.backend_name == "one process"
            checkpoints = out / "straight" / "run" / "checkpoints"
            made[overrides] = launch_worker.full_state(trainer), checkpoints
        return made[overrides]

    return reference


def launch(case: str, world: int, tmp_path: Path, reference_checkpoint: Path | None, args=None):
    """The backend worker under ``case`` on ``world`` processes, launched as a user would;
    ``args``: the worker's mode and arguments (default: the backend checks)."""
    if args is None:
        args = ["backend", str(tmp_path / "out"), str(reference_checkpoint)]
        args += PENALTIES.get(case, ())
    python = sys.executable
    if world == 1:  # a recipe switch, no launcher
        backend = (
            ["distributed.backend=fsdp"]
            if case == "fsdp"
            else [
                "distributed.backend=deepspeed",
                f"distributed.zero_stage={STAGES[case]}",
            ]
        )
        command = [python, WORKER, *args, *backend]
    else:  # the launcher decides, the recipe unchanged ("auto")
        accelerate = shutil.which("accelerate", path=str(Path(python).parent))
        if case == "fsdp":  # the shipped config (torchrun: the bf16 test)
            config = str(ROOT / "configs" / "accelerate" / "fsdp.yaml")
            command = [accelerate, "launch", "--config_file", config]
        else:
            command = [accelerate, "launch", "--use_deepspeed", "--zero_stage"]
            command += [str(STAGES[case]), "--num_machines", "1"]
        command += ["--num_processes", "2", "--mixed_precision", "no"]
        command += ["--main_process_port", str(free_port()), WORKER, *args]
    # Where a JIT-compiled op would be built (and a killed build would leave its lock): no
    # backend builds any.
    return run_command(
        command, tmp_path, timeout=400, env={"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    )


def close(a: dict, b: dict, atol: float, what: str) -> None:
    assert a.keys() == b.keys(), what
    worst = max(a, key=lambda k: (a[k].double() - b[k].double()).abs().max())
    gap = float((a[worst].double() - b[worst].double()).abs().max())
    assert gap <= atol, f"{what}: {worst} differs by {gap:.3g} (allowed {atol:g})"


def checkpoint_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's model and optimizer tensors, named as ``launch_worker.full_state``."""
    models = load_file(str(checkpoint / "models.safetensors"))
    optimizers = load_file(str(checkpoint / "optimizers.safetensors"))
    return {**models, **{f"opt.{k}": v for k, v in optimizers.items()}}


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("case", ["zero1", "zero2", "zero3", "fsdp"])
def test_backend_trains_resumes_and_skips_like_the_plain_step(tmp_path, references, case, world):
    plain, plain_checkpoints = references(PENALTIES.get(case, ()))
    done = launch(case, world, tmp_path, plain_checkpoints / "step_000002")
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"{world} process(es) on cpu" in done.stdout and NAMES[case] in done.stdout
    assert not (tmp_path / "ext").exists()  # no op compiled
    out = tmp_path / "out"
    for rank in range(world):
        tag = f"{world}_rank{rank}"
        straight = load_file(str(out / f"straight_{tag}.safetensors"))
        # n_critic 2, gradient penalty, R1 and EMA: parameters, buffers and Adam's moments
        # (gathered where sharded) as the plain step has them.
        close(straight, plain, 1e-6, f"{case} x{world} vs plain")
        # Interrupted at step 2 and resumed = uninterrupted: bit for bit on one process.
        resumed = load_file(str(out / f"resumed_{tag}.safetensors"))
        close(resumed, straight, 0.0 if world == 1 else 1e-6, "resumed vs straight")
        # A NaN batch on the last rank skips that critic update on every rank.
        info = json.loads((out / f"info_{tag}.json").read_text())
        assert info == {"backends": [NAMES[case]], "skipped": 1}  # every run on the backend
        poisoned = load_file(str(out / f"poison_{tag}.safetensors"))
        assert all(torch.isfinite(v).all() for v in poisoned.values() if v.is_floating_point())
        if rank:
            close(poisoned, load_file(str(out / f"poison_{world}_rank0.safetensors")), 0, "ranks")
        # The plain run's checkpoint, loaded under this backend, is that checkpoint exactly.
        loaded = load_file(str(out / f"loaded_{tag}.safetensors"))
        close(loaded, checkpoint_tensors(plain_checkpoints / "step_000002"), 0.0, "loaded")
    exported = load_file(str(out / "no_ema" / "run" / "generator.safetensors"))
    close(exported, load_file(str(out / "no_ema_g.safetensors")), 0.0, "export without EMA")
    # Nothing a run writes is a pickle: checkpoints are safetensors and JSON.
    kinds = {p.suffix for p in out.glob("*/run/**/*") if p.is_file()}
    assert kinds <= {".safetensors", ".json", ".jsonl", ".toml", ".png", ".html"}, kinds
    if world == 2:
        # ...and back: this backend's two-process checkpoint, resumed by one plain process.
        checkpoint = out / "straight" / "run" / "checkpoints" / "step_000002"
        recipe = launch_worker.backend_recipe(PENALTIES.get(case, ()))
        back = launch_worker.make_trainer(tmp_path / "back", *recipe, f"train.resume={checkpoint}")
        assert back.step == 2
        close(launch_worker.full_state(back), checkpoint_tensors(checkpoint), 0.0, "back")


@pytest.mark.parametrize("case", ["zero2", "zero3", "fsdp"])
def test_several_critics_train_under_a_backend_as_the_plain_step(tmp_path, case):
    """Two critics (one module of D's, one parameter group each, a critic's own R1, feature
    matching) on two processes under ZeRO-2, ZeRO-3 (which runs no regularizers: without R1
    and feature matching) or FSDP2: what the plain step trains on one."""
    bare = ("regularizers={}", "critics.scale.regularizers={}") if case == "zero3" else ()
    launch_worker.critics(tmp_path / "plain", *bare)
    plain = load_file(str(tmp_path / "plain" / "critics_1_rank0.safetensors"))
    done = launch(case, 2, tmp_path, None, ["critics", str(tmp_path / "out"), *bare])
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        assert (
            json.loads((tmp_path / "out" / f"critics_2_rank{rank}.json").read_text())
            == (NAMES[case])
        )
        two = load_file(str(tmp_path / "out" / f"critics_2_rank{rank}.safetensors"))
        close(two, plain, 1e-6, f"{case} x2 vs plain")


@pytest.mark.parametrize("case", ["zero2", "fsdp"])
def test_bf16_autocast_under_a_backend_is_finite_and_close_to_the_plain_step(tmp_path, case):
    # One mixed-precision mode per process (Accelerate): the plain bf16 run in its own.
    done = run_command([sys.executable, WORKER, "bf16", str(tmp_path / "plain")], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    expected = load_file(str(tmp_path / "plain" / "bf16_1_rank0.safetensors"))
    args = ["bf16", str(tmp_path / "out")]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", WORKER, *args]
    if case == "fsdp":
        command.append("distributed.backend=fsdp")
    else:
        command += ["distributed.backend=deepspeed", "distributed.zero_stage=2"]
    done = run_command(command, tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "mixed precision bf16" in done.stdout
    for rank in (0, 1):
        state = load_file(str(tmp_path / "out" / f"bf16_2_rank{rank}.safetensors"))
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        # bf16 forwards on half the batch per rank round differently from one process: close,
        # not equal (float32 weights and moments, 4 steps).
        close(state, expected, 2e-3, f"{case} bf16 x2 vs plain bf16")


def test_zero3_refuses_penalties_before_starting(tmp_path):
    from conftest import make_trainer
    from ganforge.errors import GanforgeError

    zero3 = ("distributed.backend=deepspeed", "distributed.zero_stage=3")
    with pytest.raises(GanforgeError, match="ZeRO-3 runs no regularizers yet"):
        make_trainer(tmp_path, *zero3, "regularizers.r1.gamma=1.0")


def test_an_export_from_deepspeed_generates(tmp_path):
    """The done-when of the DeepSpeed launch: ZeRO-2 on two processes, the quickstart stopped
    after its step-20 checkpoint and run again, ends where an uninterrupted run ends, and
    `ganforge generate` reads its export."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    small = ["generator.width=8", "discriminator.width=8", "train.checkpoint_every=20"]

    def quickstart(out: Path, steps: int):
        command = [accelerate, "launch", "--use_deepspeed", "--zero_stage", "2"]
        command += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
        command += ["--main_process_port", str(free_port()), "-m", "ganforge"]
        command += [str(ROOT / "recipes" / "quickstart.toml"), f"train.steps={steps}"]
        done = run_command([*command, *small, f"run.out_dir={out}"], tmp_path, timeout=400)
        assert done.returncode == 0, done.stderr[-4000:]
        return done

    quickstart(tmp_path / "stopped", 20)
    resumed = quickstart(tmp_path / "stopped", 40)
    assert "resumed from" in resumed.stdout
    quickstart(tmp_path / "straight", 40)
    exports = [
        load_file(str(tmp_path / r / "generator.safetensors")) for r in ("stopped", "straight")
    ]
    close(exports[0], exports[1], 1e-6, "export")
    grid = tmp_path / "grid.png"
    generate = [sys.executable, "-m", "ganforge", "generate"]
    generate += [str(tmp_path / "stopped" / "generator.safetensors"), "--num", "16", "--out"]
    done = run_command([*generate, str(grid)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert grid.stat().st_size > 0


def test_fsdp2_models_hand_no_views_to_an_in_place_loss(tmp_path):
    """Every FSDP2 run printed torch's warning that D returned a view, on which an in-place
    operation (a loss plugin's ``logits += ...``) would drop FSDP2's pre-backward hook and give
    wrong gradients silently. Outputs that are views are cloned; the warning is gone because
    the hazard is (test_backend_trains_resumes_and_skips_like_the_plain_step checks the
    gradients against the plain step)."""
    from ganforge.components import CriticOutput
    from ganforge.execution.fsdp import _outputs_not_views

    base = torch.randn(4, 3, requires_grad=True)
    out = _outputs_not_views(lambda: CriticOutput(logits=base.view(-1), features=base))()
    assert not out.logits._is_view() and out.features is base
    done = run_command(
        [
            sys.executable, "-m", "ganforge", str(ROOT / "recipes" / "quickstart.toml"),
            "distributed.backend=fsdp", "train.steps=2", "generator.width=8",
            "discriminator.width=8", f"run.out_dir={tmp_path / 'run'}", "eval.every=0",
        ],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "returned a view tensor" not in done.stderr
