"""Stopping a run early and cleanly: Ctrl-C, and too many non-finite steps in a row.

Both stops raise :class:`~ganforge.errors.TrainingStopped` from the training loop at a step
boundary, where the state is whole: a checkpoint written there resumes exactly.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from ganforge.checkpoint import list_checkpoints
from ganforge.errors import INTERRUPTED, NON_FINITE, TrainingStopped


class CtrlC:
    """While training, the first Ctrl-C (SIGINT) asks for a stop at a step boundary.

    A KeyboardInterrupt in the middle of a step would leave D updated and G not, so the handler
    only sets :attr:`requested`; the loop finishes the step, writes a checkpoint and raises
    :func:`interrupted`.

    - One process: the stop comes after the current step. A second Ctrl-C raises
      KeyboardInterrupt at once (no checkpoint).
    - Several processes: each receives the signal at its own step, so the processes agree on
      the stop at the next step where the loop reads values anyway (logged and checkpoint
      steps: ``Trainer._stop_requested``), and write the checkpoint there together. Later
      signals are ignored, because the launcher forwards the same Ctrl-C to every process; it
      ends them itself 30 s later (torchrun's grace period).

    The handler is left alone outside the main thread or when someone else installed one.
    """

    def __init__(self, processes: int = 1, announce: bool = True):
        self.requested = False
        self.processes, self.announce = processes, announce
        self.enabled = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )

    def __enter__(self) -> CtrlC:
        if self.enabled:
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _handle(self, signum, frame) -> None:
        first, self.requested = not self.requested, True
        if self.processes == 1:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one stops at once
            message = (
                "stopping after this step with a checkpoint (Ctrl-C again to stop now, without one)"
            )
        else:
            message = (
                "the processes stop together at the next logged or checkpoint step "
                "(train.log_every) and write a checkpoint there"
            )
        if first and self.announce:
            print(f"\nganforge: Ctrl-C: {message}", file=sys.stderr, flush=True)


def interrupted(step: int, checkpoint: Path | None) -> TrainingStopped:
    """The stop after Ctrl-C, once the checkpoint of ``step`` is written (``checkpoint`` is
    None on the processes other than the main one, which writes it)."""
    wrote = checkpoint or f"the checkpoint of step {step} (the main process writes it)"
    return TrainingStopped(
        f"interrupted at step {step}; wrote {wrote}; run the same command again to "
        "continue from it",
        INTERRUPTED,
    )


def too_many_skipped(step: int, in_a_row: int, limit: int, run_dir: Path) -> TrainingStopped:
    """The stop after ``in_a_row`` steps with non-finite losses or gradients."""
    saved = list_checkpoints(run_dir)
    # A skipped update leaves weights, optimizer state and EMA as they were, so the newest
    # checkpoint holds the last weights that trained with finite values.
    kept = (
        f"the newest checkpoint, {saved[-1]}, keeps the last good weights"
        if saved
        else "no checkpoint was written yet"
    )
    return TrainingStopped(
        f"at step {step}, the last {in_a_row} steps were all skipped for a non-finite loss or "
        f"gradient (train.max_skipped_in_a_row = {limit}); {kept}. Lower the learning rate, "
        "clip gradients (train.grad_clip) or add a penalty, then run again; "
        "train.max_skipped_in_a_row = 0 never stops",
        NON_FINITE,
    )
