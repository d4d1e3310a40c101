"""Experiment trackers (``[run] log_with``) through Accelerate's tracker API.

The trainer hands every logged scalar (the ``metrics.jsonl`` records, evaluations included)
and every sample grid to the trackers the recipe names. Accelerate owns the integrations:
ganforge checks that each package is installed before training starts, gives TensorBoard its
folder (``RUN_DIR/logs/RUN_NAME``) and, on resume, purges what a run logged after the
checkpoint it restarts from, so that the curves are those of one uninterrupted run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from ganforge.errors import GanforgeError

#: Trackers whose Accelerate integration logs images; the others get scalars only.
IMAGE_TRACKERS = ("tensorboard", "wandb", "aim", "clearml")
#: Where TensorBoard (and the other trackers that write local files) write, in the run folder.
LOG_DIR = "logs"


def check_available(names: list[str]) -> None:
    """Raise one GanforgeError naming every tracker whose package is not installed."""
    if not names:
        return
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [name for name in names if name not in available]
    if missing:
        packages = " ".join(missing)  # each tracker's package has its name
        raise GanforgeError(
            f"run.log_with names {', '.join(map(repr, missing))}, but the package is not "
            f"installed: pip install {packages} (or remove it from run.log_with)"
        )


def hparams(tables: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe as flat ``section.key`` values trackers accept (lists as JSON)."""
    from ganforge.recipe import flatten

    return {
        key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
        for key, value in flatten(tables).items()
    }


def start(accelerator, recipe, start_step: int) -> None:
    """Start the recipe's trackers (main process only; a no-op without ``log_with``).

    ``[run.tracker_options.NAME]`` tables go to each tracker's constructor (e.g. a W&B entity
    or an MLflow experiment). Resuming at ``start_step`` > 0, TensorBoard purges events after it.
    """
    run = recipe.section("run")
    if not run["log_with"]:
        return
    options = copy.deepcopy(run["tracker_options"])
    if start_step and "tensorboard" in run["log_with"]:
        options.setdefault("tensorboard", {}).setdefault("purge_step", start_step + 1)
    accelerator.init_trackers(run["name"], config=hparams(recipe.tables), init_kwargs=options)


def log(accelerator, values: dict[str, Any]) -> None:
    """Every number of a ``metrics.jsonl`` record, at its step."""
    if not accelerator.trackers:
        return
    numbers = {
        k: v
        for k, v in values.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    accelerator.log(numbers, step=values["step"])


def log_image(accelerator, name: str, path: Path, step: int) -> None:
    """A PNG the run wrote (a sample grid) to each tracker that takes images."""
    trackers = [t for t in accelerator.trackers if t.name in IMAGE_TRACKERS]
    if not trackers:
        return
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    for tracker in trackers:
        if tracker.name == "tensorboard":
            batch = np.asarray(image)[None]  # one image, uint8 NHWC
            tracker.log_images({name: batch}, step=step, dataformats="NHWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            tracker.log_images({name: [image]}, step=step)
        else:  # aim and clearml take one image per key
            tracker.log_images({name: image}, step=step)


def local_logs(accelerator, run_dir: Path) -> Path | None:
    """The folder TensorBoard (or another file-based tracker) wrote into, when one did."""
    folder = Path(run_dir) / LOG_DIR
    return folder if accelerator.log_with and folder.is_dir() else None


def finish(accelerator) -> None:
    """Close every tracker (flushes their files); safe to call more than once."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []
