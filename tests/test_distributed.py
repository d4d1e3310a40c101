"""Two processes over gloo on the CPU, launched as users launch them: DDP gives the model one
process gives, every rank holds the same state at each checkpoint and at the end, and the
launch types the GAN step cannot run are refused."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_command

WORKER = ROOT / "tests" / "launch_worker.py"
QUICK = (
    "train.steps=4",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "generator.width=8",
    "discriminator.width=8",
    "train.batch_size=16",
    "ema.decay=0.9",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(mixed_precision: str, *args: str) -> list[str]:
    """Two real CPU ranks from the shipped multi-GPU config (``--cpu`` alone would start one)."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    return [
        launcher,
        "launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "multi_gpu.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        mixed_precision,
        "--main_process_port",
        str(free_port()),
        *args,
    ]


def launch_two(tmp_path: Path, mixed_precision: str, *args: str):
    command = launch_command(mixed_precision, *args)
    return run_command(command, tmp_path, timeout=300, env={"ACCELERATE_USE_CPU": "1"})


def quickstart(tmp_path: Path, out: Path, *overrides: str):
    """The quickstart on two ranks in bf16, every rank's models recorded under ``out``."""
    return launch_two(tmp_path, "bf16", str(WORKER), "quickstart", str(out), *overrides)


def two_processes_match_one(tmp_path: Path, mode: str, run_one):
    """Run the worker's ``mode`` in this process, then on two launched processes: every rank's
    models equal the one process's to 1e-6. Returns the launch's result."""
    run_one(tmp_path)
    single = load_file(str(tmp_path / f"{mode}_1_rank0.safetensors"))
    done = launch_two(tmp_path, "no", str(WORKER), mode, str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        two = load_file(str(tmp_path / "two" / f"{mode}_2_rank{rank}.safetensors"))
        assert two.keys() == single.keys()
        for key in single:
            torch.testing.assert_close(two[key], single[key], rtol=0, atol=1e-6, msg=key)
    return done


def test_two_processes_train_the_model_one_process_trains(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    import launch_worker

    done = two_processes_match_one(tmp_path, "equivalence", launch_worker.equivalence)
    assert "global batch 8 = 4 per process" in done.stdout
    records = [json.loads(x) for x in (tmp_path / "two" / "run" / "metrics.jsonl").open()]
    evaluated = [r for r in records if "eval/fd" in r]
    assert [r["step"] for r in evaluated] == [3] and evaluated[0]["eval/toy2d/modes"] >= 0


def test_two_processes_train_the_input_taking_model_one_process_trains(tmp_path):
    """Super-resolution with a conditioned critic and VQGAN's adaptive weight: the weight is
    the global batch's on every process, so two processes train what one does."""
    pytest.importorskip("ganforge_superres", reason="the README's test command installs it")
    sys.path.insert(0, str(ROOT / "tests"))
    import launch_worker

    two_processes_match_one(tmp_path, "paired", launch_worker.paired)
    records = [json.loads(x) for x in (tmp_path / "two" / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "reg/adversarial_weight" in r] == [2, 3]


def test_two_processes_train_two_critics_as_one_process_does(tmp_path):
    """The 1-D toy's two critics (own weight, lr, betas and R1) with feature matching: one D
    module under DDP, so two processes train what one does."""
    sys.path.insert(0, str(ROOT / "tests"))
    import launch_worker

    done = two_processes_match_one(tmp_path, "critics", launch_worker.critics)
    assert "(DDP)" in done.stdout


def test_two_process_quickstart_agrees_on_every_rank_exports_and_resumes_exactly(tmp_path):
    out = tmp_path / "worker"
    run = tmp_path / "run"
    done = launch_two(
        tmp_path, "bf16", str(WORKER), "quickstart", str(out), *QUICK, f"run.out_dir={run}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and "global batch 16 = 8 per process" in done.stdout
    assert "mixed precision bf16" in done.stdout
    assert (run / "generator.safetensors").stat().st_size > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]

    # Each rank's batch-norm statistics follow its own shard (and latents) during the step...
    before = [load_file(str(out / f"before_sync_2_rank{r}.safetensors")) for r in (0, 1)]
    running = [k for k in before[0] if "running_mean" in k]  # G (and D, with batch norm)
    assert running and not all(torch.equal(before[0][k], before[1][k]) for k in running)
    # ...and are made identical before each checkpoint and the export: every parameter and
    # buffer agrees across ranks, and the checkpoint holds exactly that state.
    for tag in ("checkpoint_2", "checkpoint_4", "end"):
        rank0, rank1 = (load_file(str(out / f"{tag}_rank{r}.safetensors")) for r in (0, 1))
        different = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
        assert not different, f"{tag}: ranks differ in {different}"
        if tag.startswith("checkpoint"):
            step = int(tag.split("_")[1])
            saved = load_file(str(run / "checkpoints" / f"step_{step:06d}" / "models.safetensors"))
            assert saved.keys() == rank0.keys()
            assert all(torch.equal(saved[k], rank0[k]) for k in saved)
    # The quickstart conditions on data.clusters: every rank on the main process's clusters,
    # which the checkpoint holds.
    clusters = [load_file(str(out / f"end_clusters_rank{r}.safetensors"))["labels"] for r in (0, 1)]
    saved = load_file(str(run / "checkpoints" / "step_000004" / "data.safetensors"))
    assert torch.equal(clusters[0], clusters[1])
    assert torch.equal(clusters[0], saved["cluster_labels"])
    rng = load_file(str(run / "checkpoints" / "step_000004" / "rng.safetensors"))
    assert {k.split(".")[0] for k in rng} == {"rank0", "rank1"}
    assert not torch.equal(rng["rank0.latent"], rng["rank1.latent"])  # each rank's own stream

    # Extended to 6 steps, the 2-rank run resumes each rank's own state: every rank ends where
    # the ranks of an uninterrupted 6-step run end.
    longer = (*QUICK, "train.steps=6")
    done = launch_two(
        tmp_path, "bf16", str(WORKER), "quickstart", str(out), *longer, f"run.out_dir={run}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    straight = tmp_path / "straight"
    done = launch_two(
        tmp_path,
        "bf16",
        str(WORKER),
        "quickstart",
        str(straight),
        *longer,
        f"run.out_dir={tmp_path}/s",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        resumed = load_file(str(out / f"end_rank{rank}.safetensors"))
        expected = load_file(str(straight / f"end_rank{rank}.safetensors"))
        assert all(torch.equal(resumed[k], expected[k]) for k in expected), rank


def test_accelerates_own_deepspeed_and_other_unsupported_launches_are_refused_clearly():
    from accelerate.utils import DistributedType

    from ganforge.distributed import refuse_unsupported
    from ganforge.errors import GanforgeError

    refuse_unsupported(DistributedType.MULTI_GPU, DistributedType)  # DDP: fine
    refuse_unsupported(DistributedType.NO, DistributedType)
    with pytest.raises(GanforgeError, match="DEEPSPEED through Accelerate's own plugin"):
        refuse_unsupported(DistributedType.DEEPSPEED, DistributedType)
    with pytest.raises(GanforgeError, match="FSDP through Accelerate's own plugin"):
        refuse_unsupported(DistributedType.FSDP, DistributedType)
    with pytest.raises(GanforgeError, match="XLA launches are not supported"):
        refuse_unsupported(DistributedType.XLA, DistributedType)


def deepspeed_launch_command(*args: str) -> list[str]:
    """Two CPU ranks under DeepSpeed ZeRO-2, from the launcher's flags alone."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    return [
        launcher,
        "launch",
        "--use_deepspeed",
        "--zero_stage",
        "2",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        *args,
    ]


@pytest.mark.parametrize(
    "launcher, checkpoint_every",
    [
        ("ddp", 0),
        ("ddp", 5),
        pytest.param(
            "deepspeed",
            5,
            marks=pytest.mark.skipif(
                not importlib.util.find_spec("deepspeed"), reason="needs ganforge[deepspeed]"
            ),
        ),
    ],
    ids=["a new checkpoint", "a periodic one", "deepspeed"],
)
def test_ctrl_c_stops_every_process_at_one_step_with_a_checkpoint(
    tmp_path, launcher, checkpoint_every
):
    # As in a terminal: Ctrl-C reaches the launcher and both processes (one process group),
    # and the launcher forwards it again. They agree on the next step and write one
    # checkpoint there, which a later run resumes (a DeepSpeed one, on DDP).
    run = tmp_path / "run"
    make = deepspeed_launch_command if launcher == "deepspeed" else partial(launch_command, "no")
    command = make(
        "-m",
        "ganforge",
        str(ROOT / "recipes" / "quickstart.toml"),
        "generator.width=8",
        "discriminator.width=8",
        "train.batch_size=16",
        "train.steps=100000",
        "train.log_every=5",
        f"train.checkpoint_every={checkpoint_every}",
        f"run.out_dir={run}",
    )
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "GANFORGE_CACHE_DIR": str(tmp_path / "c")}
    launch = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert launch.poll() is None and time.monotonic() < deadline, launch.communicate()
        time.sleep(0.2)
    os.killpg(launch.pid, signal.SIGINT)
    out, err = launch.communicate(timeout=120)
    # Searched, not split into lines: the two processes' messages can meet on one line.
    stopped = re.findall(r"ganforge: stopped: interrupted at step (\d+);", err)
    assert len(stopped) == 2, err[-3000:]  # each process, at the same step
    step = int(stopped[0])
    assert stopped == [str(step)] * 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == f"step_{step:06d}"
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] <= step  # logged ones
    assert "[rank" not in err  # no process failed (only the launcher reports its signal)

    resumed = launch_two(tmp_path, "no", *command[command.index("-m") :], f"train.steps={step + 5}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / f'step_{step:06d}'}" in resumed.stdout
