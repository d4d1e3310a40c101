"""Stopping a run early and cleanly: Ctrl-C, SIGTERM, SIGUSR1 or SIGUSR2 (a scheduler's
warning), a launcher that died, a lifecycle hook that raised, and too many non-finite steps in
a row.

Each stop is raised from the training loop at a step boundary, where the state is whole: a
checkpoint written there resumes exactly. :class:`StopSignals` notes a signal,
:class:`LifecycleHooks` notes a plugin's failure, and :class:`StopVote` is the one decision
every process takes together, at every step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganforge.checkpoint import newest_checkpoint
from ganforge.errors import INTERRUPTED, NON_FINITE, PluginError, TrainingStopped

if TYPE_CHECKING:
    from ganforge.hookspecs import RunInfo
    from ganforge.plugins import Plugins

#: :class:`StopVote`'s value for a lifecycle hook that raised (above every signal's number).
PLUGIN_FAILED = 100.0
#: This process's launcher, noted when ganforge starts: under torchrun (and accelerate launch,
#: which runs it) the parent is the launcher's agent, and a launcher that dies while the run is
#: still being built is noticed at the first step. Elsewhere (None) a parent may come and go
#: harmlessly (nohup, a closed terminal).
_LAUNCHER = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None


class StopSignals:
    """While training, the first Ctrl-C (SIGINT), SIGTERM, SIGUSR1 or SIGUSR2 asks for a stop
    at a step boundary, with a checkpoint.

    SIGTERM is what schedulers (SLURM, Kubernetes) and ``kill`` send before they end a job;
    SIGUSR1 and SIGUSR2 are the warnings SLURM sends ahead of a time limit or preemption when
    asked to (``#SBATCH --signal=USR1@90``; submitit uses USR2), whose default action would end
    the process without a checkpoint. A KeyboardInterrupt in the middle of a step would leave
    D updated and G not, so the handler only sets :attr:`requested`; the loop finishes the
    step, writes a checkpoint and raises :func:`interrupted`. A launcher that died (the
    process's parent changed: ``torchrun``'s agent killed alone) is a stop too, as SIGTERM:
    workers do not train on as orphans holding the run's lock.

    - One process: the stop comes after the current step. A second signal acts at once, as it
      would without ganforge (Ctrl-C: KeyboardInterrupt; the others end the process), without
      a checkpoint.
    - Several processes: each receives the signal at its own step (or only one of them does),
      so the processes agree on the stop through :class:`StopVote`, one step later, and write
      the checkpoint there together. Later signals are ignored, because the launcher forwards
      the same signal to every process; it ends them itself after its grace period.

    A signal whose handler someone else installed is left alone, and so is every signal
    outside the main thread.
    """

    DEFAULTS = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: signal.SIG_DFL,
        signal.SIGUSR1: signal.SIG_DFL,
        signal.SIGUSR2: signal.SIG_DFL,
    }

    def __init__(self, processes: int = 1, announce: bool = True):
        self.requested: signal.Signals | None = None
        self.processes, self.announce = processes, announce
        self.parent = _LAUNCHER
        main_thread = threading.current_thread() is threading.main_thread()
        self.handled = [
            signum
            for signum, default in self.DEFAULTS.items()
            if main_thread and signal.getsignal(signum) is default
        ]

    def __enter__(self) -> StopSignals:
        for signum in self.handled:
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum in self.handled:
            signal.signal(signum, self.DEFAULTS[signum])

    def poll(self) -> signal.Signals | None:
        """The stop asked for so far: a signal, or SIGTERM once the launcher is gone."""
        if self.requested is None and self.parent is not None and os.getppid() != self.parent:
            self.requested = signal.SIGTERM
            print(  # by every process: each one's own launcher may be the one gone
                "\nganforge: the launcher of this process is gone; stopping at the next step "
                "with a checkpoint",
                file=sys.stderr,
                flush=True,
            )
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            return  # several processes: the launcher forwarded the same stop
        self.requested = signal.Signals(signum)
        name = "Ctrl-C" if self.requested == signal.SIGINT else self.requested.name
        if self.processes == 1:
            self._restore()  # the next signal acts at once
            message = (
                f"stopping after this step with a checkpoint ({name} again to stop now, "
                "without one)"
            )
        else:
            message = "every process stops at the next step and writes a checkpoint there"
        if self.announce:
            print(f"\nganforge: {name}: {message}", file=sys.stderr, flush=True)


class StopVote:
    """*Collective* under several processes: whether to stop after this step, decided by every
    process together at every step, without waiting on the step.

    Each process posts its own reason at every step (0: none; a signal's number; or
    :data:`PLUGIN_FAILED`) in an asynchronous all-reduce (MAX) and reads the result of the
    previous step's post, which has long arrived: every process reads the same value at the
    same step, so they stop together, one step after the first of them was asked to. On a GPU
    the result is copied to host memory behind an event, so the host waits for nothing newer
    than the previous step. One process decides at once.
    """

    def __init__(self, accelerator):
        self.acc, self.pending = accelerator, None

    def post(self, local: float) -> float:
        """Post this step's ``local`` reason; return the reason every process agreed on at the
        previous post (0.0 at the first)."""
        if self.acc.num_processes == 1:
            return local
        import torch
        import torch.distributed as dist

        agreed = self.settle()
        # torch.full, not torch.tensor: a copy from the host would wait for the device's queue.
        flag = torch.full((), float(local), device=self.acc.device)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)
        if flag.device.type == "cuda":
            work.wait()  # orders the current stream after the reduction; the host goes on
            host = torch.empty((), pin_memory=True)
            host.copy_(flag, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self.pending = (None, host, done)
        else:
            self.pending = (work, flag, None)
        return agreed

    def settle(self) -> float:
        """The agreed reason of the last post (0.0 when there is none), once it has arrived."""
        if self.pending is None:
            return 0.0
        work, value, done = self.pending
        self.pending = None
        if done is not None:
            done.synchronize()
        else:
            work.wait()
        return float(value.item())


def local_reason(signals: StopSignals, hooks: LifecycleHooks) -> float:
    """This process's reason to stop: 0 none, a signal's number, or :data:`PLUGIN_FAILED`."""
    if hooks.failure is not None:
        return PLUGIN_FAILED
    requested = signals.poll()
    return float(requested) if requested is not None else 0.0


class LifecycleHooks:
    """The lifecycle hooks a run calls while it trains (``ganforge_log``,
    ``ganforge_checkpoint``), all under one failure rule: a plugin that raises does not end the
    run on the spot, where the steps since the last checkpoint would be lost. Its failure is
    kept, later calls are skipped, and :class:`StopVote` stops the run at a step's boundary
    (this one in one process, the next under several), after its checkpoint."""

    def __init__(self, plugins: Plugins, run: RunInfo):
        self.plugins, self.run = plugins, run
        self.failure: PluginError | None = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        self._call(self.plugins.log, step, values)

    def checkpoint(self, step: int, path: str) -> None:
        self._call(self.plugins.checkpoint, step, path)

    def _call(self, hook, *args) -> None:
        if self.failure is None:
            try:
                hook(self.run, *args)
            except PluginError as err:
                self.failure = err

    def stopped(self, step: int, path: Path | None) -> PluginError:
        """The error a run stopped for a plugin's failure ends with, once ``path`` (the
        checkpoint of ``step``; None on the other processes) is written."""
        failure = self.failure or "a plugin failed on the main process"
        return PluginError(
            f"{failure}\nThe run stopped at step {step}; its checkpoint was written "
            f"first ({path or 'by the main process'}), and the same command continues it."
        )


def interrupted(
    step: int, checkpoint: Path | None, signum: signal.Signals | int | None = signal.SIGINT
) -> TrainingStopped:
    """The stop after a signal, once the checkpoint of ``step`` is written (``checkpoint`` is
    None on the processes other than the main one, which writes it). The exit status is the
    shell's for that signal, 128 + its number (130 for Ctrl-C, 143 for SIGTERM), and the same
    on every process: ``signum`` is the signal the processes agreed on."""
    wrote = checkpoint or f"the checkpoint of step {step} (the main process writes it)"
    signum = signal.Signals(int(signum or signal.SIGINT))
    how = "interrupted" if signum == signal.SIGINT else f"terminated ({signum.name})"
    return TrainingStopped(
        f"{how} at step {step}; wrote {wrote}; run the same command again to continue from it",
        INTERRUPTED if signum == signal.SIGINT else 128 + int(signum),
    )


def too_many_skipped(step: int, in_a_row: int, limit: int, run_dir: Path) -> TrainingStopped:
    """The stop after ``in_a_row`` steps with non-finite losses or gradients."""
    # A skipped update leaves weights, optimizer state and EMA as they were, so the newest
    # checkpoint holds the last weights that trained with finite values.
    kept = newest_checkpoint(run_dir, "keeps the last good weights")
    return TrainingStopped(
        f"at step {step}, the last {in_a_row} steps were all skipped for a non-finite loss or "
        f"gradient (train.max_skipped_in_a_row = {limit}); {kept}. Lower the learning rate, "
        "clip gradients (train.grad_clip) or add a penalty, then run again; "
        "train.max_skipped_in_a_row = 0 never stops",
        NON_FINITE,
    )


def non_finite_weights(step: int, names: list[str], run_dir: Path) -> TrainingStopped:
    """The stop when the state a checkpoint would hold is not finite (an update with finite
    gradients can still overflow a weight): that checkpoint is not written."""
    kept = newest_checkpoint(run_dir, "holds the last finite weights")
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return TrainingStopped(
        f"at step {step} the weights are not finite ({shown}), so no checkpoint was written "
        f"for it; {kept}. Lower the learning rate or clip gradients (train.grad_clip), then "
        "run again",
        NON_FINITE,
    )
