"""Beyond one machine, on this one: two torchrun "nodes" over 127.0.0.1 (c10d rendezvous, gloo),
restarts, preemption signals, processes that disagree, and peers that die.

Every run here is the user's command (``python -m torch.distributed.run ... -m ganforge
RECIPE``) on a 2-D toy recipe whose steps take milliseconds. Final states are compared through
the checkpoints the runs write (G, D, EMA and both optimizers).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from ganforge.tomlwriter import dump_toml

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc: Linux")

RECIPE = {
    "run": {"name": "multinode", "seed": 3},
    "data": {"name": "toy2d", "dataset": "8gaussians", "size": 256},
    "generator": {"name": "mlp", "hidden": 16, "latent_dim": 4},
    "discriminator": {"name": "mlp", "hidden": 16},
    "loss": {"name": "hinge"},
    "regularizers": {"r1": {"gamma": 1.0}},
    "ema": {"decay": 0.9},
    "train": {
        "steps": 40,
        "batch_size": 32,
        "n_critic": 2,
        "log_every": 1,
        "checkpoint_every": 10,
        "keep_checkpoints": 0,
        "sample_every": 100000,
    },
    "eval": {"every": 0},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Every launch a test started: whatever is left of them is killed after the test, so that a
#: failing test leaves no workers behind (each launch is its own process group).
STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_leftover_processes():
    yield
    while STARTED:
        proc = STARTED.pop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            proc.communicate()


@pytest.fixture(autouse=True)
def hold_default_port():
    """torchrun's default rendezvous port, held: a launch that silently fell back to it
    (an endpoint it ignored) fails loudly instead of finding a stray peer."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 29400))
            s.listen()
        except OSError:
            pass  # someone else holds it: a fall-back fails just the same
        yield


def recipe_file(tmp_path: Path, **train) -> Path:
    tables = json.loads(json.dumps(RECIPE))
    tables["train"].update(train)
    path = tmp_path / "recipe.toml"
    path.write_text(dump_toml(tables), encoding="utf-8")
    return path


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "GANFORGE_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        # What docs/distributed.md asks of a launch with --max-restarts: without it torchrun's
        # shared rendezvous store hands a restarted group the dead workers' gloo addresses.
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    }


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def node(port: int, *args: str, restarts: int = 0) -> list[str]:
    """One of two single-process "nodes" meeting at 127.0.0.1:port (c10d)."""
    return torchrun(
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        f"job{port}",
        "--local-addr",
        "127.0.0.1",
        "--max-restarts",
        str(restarts),
        "-m",
        "ganforge",
        *args,
    )


def start(command: list[str], tmp_path: Path, env: dict[str, str] | None = None):
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env or environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    STARTED.append(proc)
    return proc


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"a launch hung:\n{err[-3000:]}")
        results.append((proc.returncode, out + err))
    return results


def standalone(tmp_path: Path, recipe: Path, out: Path, *args: str, processes: int = 2):
    """The same recipe on one "node" of ``processes`` processes (the reference run)."""
    command = torchrun("--standalone", "--nproc-per-node", str(processes), "-m", "ganforge")
    return start([*command, str(recipe), f"run.out_dir={out}", *args], tmp_path)


def two_nodes(tmp_path: Path, *args: str, second: tuple[str, ...] = (), restarts: int = 0):
    port = free_port()
    return [
        start(node(port, *args, restarts=restarts), tmp_path),
        start(node(port, *args, *second, restarts=restarts), tmp_path),
    ]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run / "checkpoints").iterdir())[-1]
    state = {}
    for name in ("models", "optimizers"):
        state.update(load_file(str(newest / f"{name}.safetensors")))
    return state


def assert_same_state(a: Path, b: Path, atol: float = 0.0) -> None:
    """The newest checkpoints of two runs hold the same state: bit for bit (``atol`` 0), or
    within ``atol`` (sharded backends reduce in another order)."""
    left, right = final_state(a), final_state(b)
    assert left.keys() == right.keys() and any(k.startswith("ema.") for k in left)
    if atol == 0.0:
        different = [k for k in left if not torch.equal(left[k], right[k])]
    else:
        different = [
            k
            for k in left
            if left[k].is_floating_point()
            and not torch.allclose(left[k], right[k], atol=atol, rtol=0)
            or not left[k].is_floating_point()
            and not torch.equal(left[k], right[k])
        ]
    assert not different, different


def workers_of(agent: int) -> list[int]:
    """The processes whose parent is ``agent`` (a torchrun agent's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == agent:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def wait_for_step(metrics: Path, step: int, procs, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if lines and json.loads(lines[-1])["step"] >= step:
            return
        assert all(p.poll() is None for p in procs), finish(procs)
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)


def test_two_nodes_over_c10d_train_what_one_node_of_two_processes_trains(tmp_path):
    recipe = recipe_file(tmp_path)
    multi = two_nodes(tmp_path, str(recipe), f"run.out_dir={tmp_path / 'nodes'}")
    reference = standalone(tmp_path, recipe, tmp_path / "standalone")
    for code, output in finish([*multi, reference]):
        assert code == 0, output[-3000:]
    assert_same_state(tmp_path / "nodes", tmp_path / "standalone")


def test_the_documented_accelerate_multi_node_config_meets_over_c10d(tmp_path):
    """configs/accelerate/multi_node.yaml on two "machines" of one CPU process each: they meet
    at main_process_ip:main_process_port (not torchrun's default port, held here)."""
    recipe = recipe_file(tmp_path)
    port = free_port()
    launcher = str(Path(sys.executable).parent / "accelerate")

    def machine(rank: int) -> list[str]:
        return [
            launcher, "launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / "multi_node.yaml"),
            "--machine_rank", str(rank), "--num_machines", "2", "--num_processes", "2",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
            "--mixed_precision", "no", "-m", "ganforge", str(recipe),
            f"run.out_dir={tmp_path / 'machines'}",
        ]  # fmt: skip

    env = {**environment(tmp_path), "ACCELERATE_USE_CPU": "1"}
    procs = [start(machine(rank), tmp_path, env) for rank in (0, 1)]
    results = finish([*procs, standalone(tmp_path, recipe, tmp_path / "standalone")])
    for code, output in results:
        assert code == 0, output[-3000:]
    assert "2 process(es)" in results[0][1] + results[1][1]
    assert_same_state(tmp_path / "machines", tmp_path / "standalone")


@pytest.mark.parametrize(
    ("backend", "atol"),
    [
        ([], 0.0),  # DDP: bit for bit
        (["distributed.backend=deepspeed", "distributed.zero_stage=2"], 1e-6),
        (["distributed.backend=fsdp"], 1e-6),
    ],
    ids=["ddp", "zero2", "fsdp2"],
)
def test_a_killed_worker_restarts_the_group_which_resumes_and_ends_as_if_never_killed(
    tmp_path, backend, atol
):
    recipe = recipe_file(tmp_path, steps=120, checkpoint_every=20)
    run = tmp_path / "restarted"
    procs = two_nodes(tmp_path, str(recipe), f"run.out_dir={run}", *backend, restarts=1)
    wait_for_step(run / "metrics.jsonl", 30, procs)
    (victim,) = workers_of(procs[1].pid)
    os.kill(victim, signal.SIGKILL)
    results = finish(procs)
    for code, output in results:
        assert code == 0, output[-3000:]
    assert any("resumed from" in output for _, output in results)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 121))  # every step logged once, none twice
    straight = standalone(tmp_path, recipe, tmp_path / "straight", *backend)
    assert finish([straight])[0][0] == 0
    assert_same_state(run, tmp_path / "straight", atol)


def test_nodes_that_disagree_stop_together_at_once_naming_what_differs(tmp_path):
    recipe = recipe_file(tmp_path)
    run = tmp_path / "run"
    started = time.monotonic()
    procs = two_nodes(tmp_path, str(recipe), f"run.out_dir={run}", second=("train.n_critic=1",))
    results = finish(procs, timeout=90)
    assert time.monotonic() - started < 60
    for code, output in results:
        assert code != 0 and "exitcode  : 2" in output, output[-2000:]
        assert "do not agree" in output and "recipe train.n_critic" in output, output[-2000:]
        assert re.search(r"rank \d: [12]; rank \d: [12]", output), output[-2000:]
    assert not (run / "checkpoints").exists()

    # One node sees the run's checkpoints, the other an empty folder (node-local storage).
    assert finish([standalone(tmp_path, recipe, run, "train.steps=20")])[0][0] == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    port = free_port()
    procs = [
        start(node(port, str(recipe), f"run.out_dir={run}"), tmp_path),
        start(node(port, str(recipe), f"run.out_dir={tmp_path / 'empty'}"), tmp_path),
    ]
    for code, output in finish(procs, timeout=90):
        assert code != 0 and "exitcode  : 2" in output, output[-2000:]
        assert "finds no checkpoint" in output and "resumes step 20" in output, output[-2000:]
        assert "storage every node sees" in output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert not list((tmp_path / "empty").glob("checkpoints/*"))


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_a_preemption_signal_to_one_process_checkpoints_within_a_step_everywhere(tmp_path, signum):
    """SLURM warns with SIGUSR1 (submitit: SIGUSR2), whose default action ended the process
    without a checkpoint; a stop was agreed only at logged steps (train.log_every = 1000: never
    within a scheduler's grace period). One process of two gets the signal here."""
    recipe = recipe_file(tmp_path, steps=100000, log_every=1000, checkpoint_every=0)
    run = tmp_path / "run"
    launch = standalone(tmp_path, recipe, run)
    deadline = time.monotonic() + 120
    while not (run / "recipe.toml").exists():  # written just before the first step
        assert launch.poll() is None and time.monotonic() < deadline, finish([launch])
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(sorted(workers_of(launch.pid))[-1], signum)
    code, output = finish([launch])[0]
    stopped = re.findall(r"terminated \((\w+)\) at step (\d+);", output)
    assert len(stopped) == 2 and len(set(stopped)) == 1, output[-3000:]  # same step, same name
    assert stopped[0][0] == signum.name
    step = int(stopped[0][1])
    assert 0 < step < 1000  # not held until a logged step
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{step:06d}"]
    assert code != 0 and f"exitcode  : {128 + signum}" in output, output[-2000:]


def test_a_signal_to_a_one_process_run_checkpoints_and_exits_with_its_status(tmp_path):
    recipe = recipe_file(tmp_path, steps=100000, log_every=1000, checkpoint_every=0)
    run = tmp_path / "run"
    proc = start([sys.executable, "-m", "ganforge", str(recipe), f"run.out_dir={run}"], tmp_path)
    deadline = time.monotonic() + 120
    while not (run / "recipe.toml").exists():
        assert proc.poll() is None and time.monotonic() < deadline, finish([proc])
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    code, output = finish([proc])[0]
    assert code == 128 + signal.SIGUSR1, output[-2000:]
    step = int(re.search(r"terminated \(SIGUSR1\) at step (\d+);", output).group(1))
    assert (run / "checkpoints" / f"step_{step:06d}").is_dir()


def test_a_peer_killed_without_restarts_ends_the_survivor_with_one_message(tmp_path):
    recipe = recipe_file(tmp_path, steps=100000, checkpoint_every=0)
    run = tmp_path / "run"
    procs = two_nodes(tmp_path, str(recipe), f"run.out_dir={run}", "distributed.timeout=30")
    wait_for_step(run / "metrics.jsonl", 5, procs)
    os.kill(workers_of(procs[1].pid)[0], signal.SIGKILL)
    started = time.monotonic()
    results = finish(procs, timeout=60)
    assert time.monotonic() - started < 45
    survivor = results[0][1]
    assert results[0][0] != 0 and "another process of this launch" in survivor, survivor[-3000:]
    assert "exitcode  : 4" in survivor and "ganforge/trainer.py" not in survivor  # one line


def test_workers_whose_launcher_died_stop_with_a_checkpoint_and_free_the_run(tmp_path):
    """SIGKILL to the torchrun agent alone once left both workers training as orphans, holding
    the run's lock; the same command then failed on a checkpoint they were pruning."""
    recipe = recipe_file(tmp_path, steps=100000, checkpoint_every=0)
    run = tmp_path / "run"
    command = torchrun("--standalone", "--nproc-per-node", "2", "-m", "ganforge", str(recipe))
    launch = start([*command, f"run.out_dir={run}"], tmp_path)
    wait_for_step(run / "metrics.jsonl", 5, [launch])
    workers = workers_of(launch.pid)
    assert len(workers) == 2
    os.kill(launch.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "orphaned workers kept training"
        time.sleep(0.1)
    (checkpoint,) = (run / "checkpoints").iterdir()
    step = int(checkpoint.name.split("_")[1])
    again = start([*command, f"run.out_dir={run}", f"train.steps={step + 3}"], tmp_path)
    code, output = finish([again])[0]
    assert code == 0 and f"resumed from {checkpoint}" in output, output[-3000:]
