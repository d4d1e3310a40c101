"""Checkpoints: the whole training state in safetensors + JSON, written atomically, no pickle.

``RUN_DIR/checkpoints/step_NNNNNN/`` holds

- ``models.safetensors``: G, D and EMA parameters and buffers (``generator.*``,
  ``discriminator.*``, ``ema.*``);
- ``optimizers.safetensors``: both optimizers' tensor state, flattened to
  ``<model>.<param index>.<name>``;
- ``rng.safetensors``: every process's random states (``rank<r>.<stream>``, uint8), gathered
  by the main process;
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
from safetensors.torch import load_file, save_file

import ganforge
from ganforge.errors import GanforgeError, RecipeError
from ganforge.recipe import flatten, role_of
from ganforge.runfiles import cpu_tensors, default_mode

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
        return load_file(str(self.path / f"{name}.safetensors"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Verify a checkpoint folder (every file present, sizes and checksums) and open it."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {STATE_FILE}: not a ganforge checkpoint") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / STATE_FILE} is damaged: {err}") from None
    if not isinstance(state, dict) or "format_version" not in state or "files" not in state:
        raise CheckpointError(f"{path / STATE_FILE} is not a ganforge checkpoint state")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer ganforge (checkpoint format "
            f"{state['format_version']}, this version reads {FORMAT_VERSION}); upgrade ganforge"
        )
    for name, expected in state["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path} is incomplete: {name} is missing")
        if file.stat().st_size != expected["bytes"] or _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{path} is damaged: {name} does not match its checksum")
    return Checkpoint(path, state)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders under ``run_dir`` (complete by name), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


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
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        files = {}
        for name, group in tensors.items():
            file = tmp / f"{name}.safetensors"
            save_file(group, str(file))
            files[file.name] = {"bytes": file.stat().st_size, "sha256": _sha256(file)}
        document = {
            "format_version": FORMAT_VERSION,
            "ganforge_version": ganforge.__version__,
            "step": step,
            **state,
            "files": files,
        }
        (tmp / STATE_FILE).write_text(json.dumps(document, indent=1), encoding="utf-8")
        _fsync_folder(tmp)
        tmp.chmod(default_mode(folder=True))
        if final.exists():  # rewriting a step (e.g. a run resumed at its last checkpoint)
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def _fsync_folder(folder: Path) -> None:
    """Flush the files to disk before the rename makes the checkpoint visible."""
    for file in folder.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _prune(root: Path, keep: int) -> None:
    # Temporary folders of writes that died (killed mid-write) are incomplete by definition.
    for stale in root.glob(".step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep > 0:
        for old in list_checkpoints(root.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load ``tensors`` into ``module`` exactly (every key, every shape) or explain why not."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        detail = str(err).split("\n\t", 1)[-1].replace("\n\t", "; ")
        raise CheckpointError(f"{what} do not fit the model this recipe builds: {detail}") from None


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


def rng_states(latent_rng: torch.Generator) -> dict[str, torch.Tensor]:
    """This process's random streams as uint8 tensors."""
    import random

    import numpy as np

    states = {"torch": torch.get_rng_state(), "latent": latent_rng.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
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


def restore_rng(states: dict[str, torch.Tensor], latent_rng: torch.Generator) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    latent_rng.set_state(states["latent"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
    host = json.loads(bytes(states["host"].tolist()).decode())
    version, internal, gauss = host["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = host["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def gather_rank_states(
    local: dict[str, torch.Tensor], accelerator
) -> dict[str, torch.Tensor] | None:
    """Every process's ``local`` tensors (uint8) on the main process as ``rank<r>.<name>``.

    A collective call: every process calls it; the main process gets the dict, others None.
    """
    world = accelerator.num_processes
    if world == 1:
        return {f"rank0.{k}": v for k, v in local.items()}
    import torch.distributed as dist

    device = accelerator.device
    names = sorted(local)
    flat = torch.cat([local[n].reshape(-1).to(torch.uint8) for n in names]).to(device)
    sizes = torch.tensor([local[n].numel() for n in names], device=device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    longest = max(int(s.sum()) for s in all_sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: flat.numel()] = flat
    everyone = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(everyone, padded)
    if not accelerator.is_main_process:
        return None
    out = {}
    for rank, (data, rank_sizes) in enumerate(zip(everyone, all_sizes, strict=True)):
        parts = torch.split(data.cpu()[: int(rank_sizes.sum())], rank_sizes.tolist())
        out.update({f"rank{rank}.{n}": p.clone() for n, p in zip(names, parts, strict=True)})
    return out


# --------------------------------------------------------------------------- resume rules


def check_resumable(saved_tables: dict[str, Any], recipe, checkpoint: Path) -> None:
    """Refuse a recipe that changed what shapes the models or the optimisation."""
    before = {k: v for k, v in flatten(saved_tables).items() if role_of(k)}
    now = recipe.fixed_values()
    problems = []
    for key in sorted(before.keys() | now.keys()):
        old, new = before.get(key, "(unset)"), now.get(key, "(unset)")
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
    if setting == "auto":
        return latest_checkpoint(run_dir)
    return find_checkpoint(setting)


def set_aside(run_dir: Path) -> Path:
    """Move an earlier run out of the way of a new one in the same folder; nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.before-{stamp}")
    try:
        os.replace(run_dir, target)
    except OSError as err:
        raise CheckpointError(
            f"{run_dir} holds an earlier run's checkpoints and could not be moved aside for a "
            f"new run ({err}); choose another run.out_dir"
        ) from None
    return target
