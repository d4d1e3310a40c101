"""Stopping a run early and cleanly: Ctrl-C or SIGTERM, a lifecycle hook that raised, and too
many non-finite steps in a row.

Each stop is raised from the training loop at a step boundary, where the state is whole: a
checkpoint written there resumes exactly. :class:`StopSignals` notes a signal,
:class:`LifecycleHooks` notes a plugin's failure, and :func:`stop_reason` is the one decision
every process takes together.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganforge.checkpoint import newest_checkpoint
from ganforge.distributed import decide_together
from ganforge.errors import INTERRUPTED, NON_FINITE, TERMINATED, PluginError, TrainingStopped

if TYPE_CHECKING:
    from ganforge.hookspecs import RunInfo
    from ganforge.plugins import Plugins

#: :func:`stop_reason` for a lifecycle hook that raised (above a signal's 1).
PLUGIN_FAILED = 2.0


class StopSignals:
    """While training, the first Ctrl-C (SIGINT) or SIGTERM asks for a stop at a step boundary.

    SIGTERM is what schedulers (SLURM, Kubernetes) and ``kill`` send before they end a job, so a
    preempted run keeps its progress the way a Ctrl-C does. A KeyboardInterrupt in the middle of
    a step would leave D updated and G not, so the handler only sets :attr:`requested`; the
    loop finishes the step, writes a checkpoint and raises :func:`interrupted`.

    - One process: the stop comes after the current step. A second signal acts at once, as it
      would without ganforge (Ctrl-C: KeyboardInterrupt; SIGTERM: the process ends), without a
      checkpoint.
    - Several processes: each receives the signal at its own step, so the processes agree on
      the stop at the next step where the loop reads values anyway (logged, evaluation and
      checkpoint steps: :func:`stop_reason`), and write the checkpoint there together. Later
      signals are ignored, because the launcher forwards the same signal to every process; it
      ends them itself 30 s later (torchrun's grace period).

    A signal whose handler someone else installed is left alone, and so is every signal
    outside the main thread.
    """

    DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self, processes: int = 1, announce: bool = True):
        self.requested: signal.Signals | None = None
        self.processes, self.announce = processes, announce
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

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            return  # several processes: the launcher forwarded the same stop
        self.requested = signal.Signals(signum)
        name = self.NAMES[self.requested]
        if self.processes == 1:
            self._restore()  # the next signal acts at once
            message = (
                f"stopping after this step with a checkpoint ({name} again to stop now, "
                "without one)"
            )
        else:
            message = (
                "the processes stop together at the next logged, evaluation or checkpoint step "
                "(train.log_every) and write a checkpoint there"
            )
        if self.announce:
            print(f"\nganforge: {name}: {message}", file=sys.stderr, flush=True)


class LifecycleHooks:
    """The lifecycle hooks a run calls while it trains (``ganforge_log``,
    ``ganforge_checkpoint``), all under one failure rule: a plugin that raises does not end the
    run on the spot, where the steps since the last checkpoint would be lost. Its failure is
    kept, later calls are skipped, and :func:`stop_reason` stops the run at this step's
    boundary, after its checkpoint."""

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


def stop_reason(signals: StopSignals, hooks: LifecycleHooks, accelerator, reading: bool) -> float:
    """*Collective* under several processes. Whether to stop after this step: 0 no, 1 for a
    signal, :data:`PLUGIN_FAILED` for a lifecycle hook that raised.

    Several processes decide together, on steps where the loop reads values anyway
    (``reading``: logged, checkpoint and evaluation steps), so that every process writes the
    same checkpoint: any process that got the signal (or a plugin's failure: the main process
    calls them) stops them all.
    """
    local = float(signals.requested is not None)
    if hooks.failure is not None:
        local = PLUGIN_FAILED
    if accelerator.num_processes == 1:
        return local
    return decide_together(local, accelerator) if reading else 0.0


def interrupted(
    step: int, checkpoint: Path | None, signum: signal.Signals | None = signal.SIGINT
) -> TrainingStopped:
    """The stop after Ctrl-C or SIGTERM, once the checkpoint of ``step`` is written
    (``checkpoint`` is None on the processes other than the main one, which writes it)."""
    wrote = checkpoint or f"the checkpoint of step {step} (the main process writes it)"
    how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    return TrainingStopped(
        f"{how} at step {step}; wrote {wrote}; run the same command again to continue from it",
        TERMINATED if signum == signal.SIGTERM else INTERRUPTED,
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
