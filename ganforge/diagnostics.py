"""What a run tells its user as it goes and when it ends: warnings when training goes wrong
(the critic pinned at full accuracy, losses that diverge) and the end-of-run summary.

Everything here reads the host values of a log step (``metrics.jsonl`` records); nothing reads
the device, so the step body stays free of host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: D's sign accuracy at or above this, over ``PINNED_LOG_STEPS`` log steps in a row, is a warning.
PINNED_ACCURACY = 0.99
PINNED_LOG_STEPS = 3
#: A loss this many times larger (in magnitude) than at the first log step has diverged.
EXPLODED_FACTOR = 100.0


class Watch:
    """Reads each log step's values and says, once per kind of problem, when training looks
    wrong: D's accuracy pinned near 100% (G gets no useful gradient), or a loss that is
    non-finite or has grown by orders of magnitude."""

    def __init__(
        self,
        pinned_accuracy: float = PINNED_ACCURACY,
        pinned_log_steps: int = PINNED_LOG_STEPS,
        exploded_factor: float = EXPLODED_FACTOR,
    ):
        self.pinned_accuracy, self.pinned_log_steps = pinned_accuracy, pinned_log_steps
        self.exploded_factor = exploded_factor
        self.pinned_in_a_row = 0
        self.first_losses: dict[str, float] = {}
        self.warned: set[str] = set()

    def check(self, values: Mapping[str, Any]) -> list[str]:
        """The warnings this log step raises for the first time (usually none)."""
        found = []
        accuracy = values.get("d_accuracy")
        if accuracy is not None:
            pinned = accuracy >= self.pinned_accuracy
            self.pinned_in_a_row = self.pinned_in_a_row + 1 if pinned else 0
            if self.pinned_in_a_row >= self.pinned_log_steps:
                found.append(
                    (
                        "pinned",
                        f"D's accuracy has been {accuracy:.1%} or more for "
                        f"{self.pinned_in_a_row} log steps in a row (step {values['step']}): the "
                        "critic wins outright and G learns little; consider a lower D learning "
                        "rate, a regularizer (r1, gradient_penalty) or augmentation",
                    )
                )
        for name in ("d_loss", "g_loss"):
            loss = values.get(name)
            if loss is None:
                continue
            if not math.isfinite(loss):
                found.append(
                    (name, f"{name} is {loss} at step {values['step']}; those updates are skipped")
                )
                continue
            first = self.first_losses.setdefault(name, loss)
            if abs(loss) > self.exploded_factor * max(abs(first), 1.0):
                found.append(
                    (
                        name,
                        f"{name} is diverging: {loss:.4g} at step {values['step']}, "
                        f"{abs(loss) / max(abs(first), 1.0):.0f}x its first logged value",
                    )
                )
        fresh = [(kind, text) for kind, text in found if kind not in self.warned]
        self.warned.update(kind for kind, _ in fresh)
        return [f"ganforge: warning: {text}" for _, text in fresh]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes:02d}m{secs:04.1f}s" if hours else f"{minutes}m{secs:04.1f}s"


def summary(
    *,
    wall_s: float,
    first_step: int,
    last_step: int,
    images: int,
    last_log: Mapping[str, Any] | None,
    last_eval: Mapping[str, Any] | None,
    paths: Mapping[str, Path | None],
) -> str:
    """The end-of-run lines: wall time, steps, images/s, final losses and metrics, files."""
    rate = images / max(wall_s, 1e-9)
    lines = [
        f"ganforge: done: steps {first_step} -> {last_step} in {_duration(wall_s)}, "
        f"{images} real images, {rate:.1f} images/s"
    ]
    if last_log:
        shown = [
            f"{key} {last_log[key]:.4g}"
            for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_accuracy", "kimg")
            if key in last_log
        ]
        lines.append(f"ganforge: final (step {last_log['step']}): {', '.join(shown)}")
    if last_eval:
        shown = [
            f"{key.removeprefix('eval/')} {v:.4g}" for key, v in last_eval.items() if key != "step"
        ]
        lines.append(f"ganforge: final eval (step {last_eval['step']}): {', '.join(shown)}")
    for name, path in paths.items():
        if path is not None:
            lines.append(f"ganforge: {name}: {path}")
    return "\n".join(lines)
