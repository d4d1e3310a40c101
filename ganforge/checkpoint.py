"""Checkpoints: the whole training state in safetensors + JSON, written atomically, no pickle.

``RUN_DIR/checkpoints/step_NNNNNN/`` holds

- ``models.safetensors``: G, D and EMA parameters and buffers (``generator.*``,
  ``discriminator.*``, ``ema.*``) and the state of regularizers that keep some
  (``regularizers.NAME.*``);
- ``optimizers.safetensors``: both optimizers' tensor state, flattened to
  ``<model>.<param index>.<name>``;
- ``rng.safetensors``: every process's random states (``rank<r>.<stream>``, uint8), gathered
  by the main process;
- ``data.safetensors``, with ``data.clusters`` only: the cluster of every sample
  (``cluster_labels``), so that a resume trains on the same clusters;
- ``state.json``: step, sampler state, skipped steps, the loss scaler, the optimizers'
  non-tensor state, the resolved recipe, what an export needs, and the size and SHA-256 of
  every file above, so a damaged checkpoint is detected before anything is loaded from it.

A checkpoint is written into a temporary folder beside its final name and renamed into place:
``step_NNNNNN`` either holds a complete checkpoint or does not exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import ganforge
from ganforge.errors import GanforgeError, RecipeError
from ganforge.recipe import core_default, flatten, role_of
from ganforge.runfiles import as_os_error, cpu_tensors, default_mode, sha256_file

FORMAT_VERSION = 1
STATE_FILE = "state.json"
CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step_(\d{6,})$")


class CheckpointError(GanforgeError):
    """A checkpoint is missing, incomplete, damaged, or does not fit the recipe."""


def warn(message: str) -> None:
    print(f"ganforge: warning: {message}", file=sys.stderr, flush=True)


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint folder: its step and ``state.json``; tensors load on demand."""

    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of ``<name>.safetensors`` on the CPU."""
        try:
            return load_file(str(self.path / f"{name}.safetensors"))
        except (OSError, SafetensorError) as err:  # changed on disk since it was verified
            raise CheckpointError(f"{self.path}: cannot read {name}.safetensors: {err}") from None


#: The files of a checkpoint, and the keys (with their JSON types) of its state.json.
FILES = ("models.safetensors", "optimizers.safetensors", "rng.safetensors")
#: Written when the run has them: the clusters of data.clusters.
OPTIONAL_FILES = ("data.safetensors",)
REQUIRED = {
    "format_version": int,
    "step": int,
    "skipped_steps": int,
    "sampler": dict,
    "data_size": int,
    "world_size": int,
    "optimizers": dict,
    "recipe": dict,
    "export": dict,
    "files": dict,
}


#: state.json's own SHA-256 (of its other keys, canonically serialised): a flipped bit in the
#: step, a learning rate or the sampler position is damage like a flipped tensor bit.
STATE_DIGEST = "state_sha256"


def state_digest(document: dict[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != STATE_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_fields(path: Path, state: dict[str, Any]) -> None:
    """The state's values make sense together (beyond their checksum, which older checkpoints
    lack): a step that is the folder's, counters and a sampler position in range."""
    problems = []
    named = _NAME.match(path.name)
    if state["step"] < 0 or (named and int(named.group(1)) != state["step"]):
        problems.append(f"step {state['step']} is not this folder's")
    for key in ("skipped_steps", "skipped_in_a_row"):
        value = state.get(key, 0)
        if type(value) is not int or not 0 <= value <= max(state["step"], 0) * 64 + 64:
            problems.append(f"{key} {value!r} is out of range")
    # The data order covers the data twice under data.xflip (older checkpoints: once).
    sampler, size = state["sampler"], state.get("samples", state["data_size"])
    epoch, offset = sampler.get("epoch"), sampler.get("offset")
    if type(epoch) is not int or type(offset) is not int or epoch < 0 or not 0 <= offset <= size:
        problems.append(f"sampler {sampler!r} does not fit {size} samples")
    if size < 1 or state["world_size"] < 1:
        problems.append("data_size and world_size must be >= 1")
    if problems:
        raise CheckpointError(f"{path / STATE_FILE} is damaged: {'; '.join(problems)}")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Verify a checkpoint folder (state.json complete, every file's size and checksum)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {STATE_FILE}: not a ganforge checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / STATE_FILE} is unreadable: {err}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / STATE_FILE} is not a ganforge checkpoint state")
    version = state.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer ganforge (checkpoint format {version}, this "
            f"version reads {FORMAT_VERSION}); upgrade ganforge"
        )
    wrong = [k for k, kind in REQUIRED.items() if not isinstance(state.get(k), kind)]
    wrong += [k for k, kind in REQUIRED.items() if kind is int and type(state.get(k)) is bool]
    if wrong:
        raise CheckpointError(f"{path / STATE_FILE} is damaged: bad or missing {', '.join(wrong)}")
    if STATE_DIGEST in state and state[STATE_DIGEST] != state_digest(state):
        raise CheckpointError(f"{path / STATE_FILE} is damaged: it does not match its checksum")
    _check_fields(path, state)
    listed = set(state["files"])
    if not set(FILES) <= listed or not listed <= set(FILES + OPTIONAL_FILES):
        raise CheckpointError(
            f"{path / STATE_FILE} is damaged: it does not list {', '.join(FILES)}"
            f" (and nothing but {', '.join(OPTIONAL_FILES)} beside them)"
        )
    for name, expected in state["files"].items():
        file = path / name
        try:
            intact = (
                file.stat().st_size == expected["bytes"] and sha256_file(file) == expected["sha256"]
            )
        except FileNotFoundError:
            raise CheckpointError(f"{path} is incomplete: {name} is missing") from None
        except (OSError, TypeError, KeyError) as err:
            raise CheckpointError(f"{path} is damaged: {name}: {err}") from None
        if not intact:
            raise CheckpointError(f"{path} is damaged: {name} does not match its checksum")
    _check_streams(path, state["world_size"])
    return Checkpoint(path, state)


#: The random streams ``rng.safetensors`` holds for every process that wrote a checkpoint.
STREAMS = {"torch", "latent", "host"}


def _check_streams(path: Path, world_size: int) -> None:
    """Every process that state.json says wrote the checkpoint has its random streams in
    ``rng.safetensors`` (read from the file's header only), so that each process of a resume
    finds its own; else one message, on every process alike, instead of one process's
    KeyError and its peers' hang."""
    try:
        with safe_open(str(path / "rng.safetensors"), framework="pt") as f:
            keys = list(f.keys())
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path} is damaged: rng.safetensors: {err}") from None
    ranks: dict[str, set[str]] = {}
    for key in keys:
        rank, _, name = key.partition(".")
        ranks.setdefault(rank, set()).add(name)
    expected = {f"rank{r}" for r in range(world_size)}
    if set(ranks) != expected or not all(names >= STREAMS for names in ranks.values()):
        held = ", ".join(sorted(ranks, key=lambda r: (len(r), r))) or "none"
        raise CheckpointError(
            f"{path} is damaged: its state.json says {world_size} process(es) wrote it, and "
            f"rng.safetensors holds the random streams of {held}"
        )


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders under ``run_dir`` (complete by name), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.match(p.name)), key=_step_of)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint of ``run_dir`` that verifies; damaged ones are skipped, warned."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return open_checkpoint(path)
        except CheckpointError as err:
            warn(f"skipping checkpoint: {err}")
    return None


def find_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint named by the user: a checkpoint folder, or a run folder (its newest)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if (path / STATE_FILE).exists() or _NAME.match(path.name):
        return open_checkpoint(path)
    if (path / CHECKPOINTS).is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path} has no usable checkpoint")
        return found
    raise CheckpointError(f"{path} is neither a run folder nor a checkpoint folder")


# --------------------------------------------------------------------------- writing


def write_checkpoint(
    run_dir: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``<name>.safetensors`` per entry of ``tensors`` and ``state.json``, atomically.

    Keeps the newest ``keep`` checkpoints (0 keeps all). Returns the checkpoint folder.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    except OSError as err:
        raise _write_failed(final, err) from None
    try:
        files = {}
        for name, group in tensors.items():
            file = tmp / f"{name}.safetensors"
            save_file(group, str(file))
            files[file.name] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
        document = {
            "format_version": FORMAT_VERSION,
            "ganforge_version": ganforge.__version__,
            "step": step,
            **state,
            "files": files,
        }
        document[STATE_DIGEST] = state_digest(document)
        (tmp / STATE_FILE).write_text(json.dumps(document, indent=1), encoding="utf-8")
        _fsync_folder(tmp)
        tmp.chmod(default_mode(folder=True))
        if final.exists():  # an earlier checkpoint of this step: kept, under another name
            set_aside(final, "replaced")
        os.replace(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = as_os_error(err) if isinstance(err, Exception) else None
        if failed is not None:  # a full disk, a quota, a vanished folder
            raise _write_failed(final, failed) from None
        raise
    _prune(root, step, keep)
    return final


def newest_checkpoint(run_dir: Path, what: str, exclude: Path | None = None) -> str:
    """``the newest checkpoint, PATH, WHAT`` for the messages of a stopped or failed run (or
    that there is none)."""
    saved = [p for p in list_checkpoints(run_dir) if p != exclude]
    return f"the newest checkpoint, {saved[-1]}, {what}" if saved else "no checkpoint was written"


def _write_failed(final: Path, err: OSError) -> CheckpointError:
    """What a failed checkpoint write says: why, and that the earlier checkpoints are intact."""
    kept = newest_checkpoint(final.parent.parent, "is intact", exclude=final)
    return CheckpointError(
        f"could not write checkpoint {final}: {err.strerror or err}; {kept}. Free space (or fix "
        "the folder) and run the same command again to continue"
    )


def _fsync_folder(folder: Path) -> None:
    """Flush the files to disk before the rename makes the checkpoint visible."""
    for file in folder.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _prune(root: Path, step: int, keep: int) -> None:
    """Remove temporary folders of writes that died, and all but the newest ``keep``
    checkpoints up to ``step`` (the one just written always stays)."""
    for stale in root.glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep > 0:
        older = [p for p in list_checkpoints(root.parent) if _step_of(p) <= step]
        for old in older[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load ``tensors`` into ``module`` exactly (every key, every shape) or explain why not."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        detail = str(err).split("\n\t", 1)[-1].replace("\n\t", "; ")
        raise CheckpointError(f"{what} do not fit the model this recipe builds: {detail}") from None


def load_matching(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str
) -> tuple[int, int]:
    """Load the ``tensors`` whose names and shapes match ``module``'s (another architecture's
    weights); returns how many of the module's tensors were loaded, of how many. None matching
    is an error: the source is not related to this model."""
    own = module.state_dict()
    fitting = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise CheckpointError(
            f"none of the {len(tensors)} tensors of the {what} match a name and shape of the "
            "model this recipe builds"
        )
    module.load_state_dict(fitting, strict=False)
    return len(fitting), len(own)


# --------------------------------------------------------------------------- optimizer state


def flatten_optimizer(state: dict[str, Any], prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``prefix<index>.<name>``) and JSON."""
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return cpu_tensors(tensors), {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(
    tensors: dict[str, torch.Tensor], document: dict, current: dict[str, Any]
) -> dict[str, Any]:
    """Rebuild an optimizer state dict; ``current`` (the live optimizer's) gives JSON types back."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *document["scalars"].items()]:
        index, _, key = name.partition(".")
        state.setdefault(int(index), {})[key] = value
    groups = []
    for saved, live in zip(document["param_groups"], current["param_groups"], strict=True):
        # JSON turns tuples (Adam's betas) into lists.
        groups.append(
            {k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in saved.items()}
        )
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- random states


def rng_states(latent_rng: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random streams as uint8 tensors (the same names on every process)."""
    import random

    import numpy as np

    states = {"torch": torch.get_rng_state(), "latent": latent_rng.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    py = random.getstate()
    np_state = np.random.get_state()
    text = json.dumps(
        {
            "python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        }
    )
    states["host"] = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)
    return states


def restore_rng(
    states: dict[str, torch.Tensor], latent_rng: torch.Generator, device: torch.device
) -> bool:
    """Give this process its random streams back. False when the latent stream's state is of
    another kind of generator (a checkpoint from a CPU run resumed on a GPU, or back): that
    stream is then left for the caller to re-seed."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    same_kind = states["latent"].numel() == latent_rng.get_state().numel()
    if same_kind:
        latent_rng.set_state(states["latent"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    host = json.loads(bytes(states["host"].tolist()).decode())
    version, internal, gauss = host["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = host["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    return same_kind


# --------------------------------------------------------------------------- resume rules


def check_resumable(saved_tables: dict[str, Any], recipe, checkpoint: Path) -> None:
    """Refuse a recipe that changed what shapes the models or the optimisation."""
    before = {k: v for k, v in flatten(saved_tables).items() if role_of(k)}
    now = recipe.fixed_values()
    problems = []
    for key in sorted(before.keys() | now.keys()):
        # A key the checkpoint's recipe lacks was added to ganforge since: its default is
        # what that run trained with.
        old = before[key] if key in before else core_default(key, "(unset)")
        new = now.get(key, "(unset)")
        if old != new:
            problems.append((key, f"is {new!r}, but the checkpoint was trained with {old!r}"))
    if problems:
        problems.append(
            (
                "",
                f"a resumed run ({checkpoint}) may change train.steps and logging only; to "
                "start a new run from these weights, use another run.out_dir with "
                f'train.init_from = "{checkpoint}"',
            )
        )
        raise RecipeError(problems, recipe.source)


def resume_target(setting: str, run_dir: Path) -> Checkpoint | None:
    """What ``train.resume`` points at: None for a new run."""
    if setting == "never":
        return None
    if setting != "auto":
        return find_checkpoint(setting)
    found = latest_checkpoint(run_dir)
    if found is None and list_checkpoints(run_dir):
        raise CheckpointError(
            f"{run_dir} holds checkpoints, but none is usable (see the warnings above); "
            'start a new run with --no-resume (train.resume = "never"), which moves the '
            "earlier run aside"
        )
    return found


def set_aside(path: Path, why: str) -> Path:
    """Rename ``path`` out of the way (``<name>.<why>-<date>-<time>``); nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    try:
        os.replace(path, target)
    except OSError as err:
        raise CheckpointError(
            f"could not move {path} aside ({err}); choose another run.out_dir"
        ) from None
    return target


def set_aside_newer(checkpoint: Checkpoint, run_dir: Path) -> list[Path]:
    """Checkpoints of ``run_dir`` past the one a run resumes from (damaged ones skipped, or a
    line abandoned by resuming an older checkpoint) are renamed, so that "auto" later resumes
    this run's own line, and the newest-``keep`` rule never counts them."""
    newer = [p for p in list_checkpoints(run_dir) if _step_of(p) > checkpoint.step]
    return [set_aside(p, "superseded") for p in newer]
