"""Generator export: one safetensors file, weights plus self-describing metadata.

The metadata (JSON under the ``ganforge`` key) says everything needed to rebuild and sample the
generator without the recipe file: the registry entry and its kwargs, the plugin distribution
that provides it, the latent shape and prior, the output format, classes, and the resolved
recipe. Nothing in the file is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import ganforge
from ganforge.averaging import standing_statistics
from ganforge.checkpoint import Checkpoint, load_module, strip_prefix, warn
from ganforge.clusters import draw_inputs
from ganforge.components import latent_shape, sample_latents
from ganforge.errors import GanforgeError, RecipeError
from ganforge.plugins import DISABLE_ENV, Plugins
from ganforge.registry import Entry, Registry
from ganforge.runfiles import atomic_write, cpu_tensors
from ganforge.schema import MAX_RESOLUTION

FORMAT_VERSION = 1
METADATA_KEY = "ganforge"


def export_metadata(
    generator: torch.nn.Module,
    entry: Entry,
    kwargs: dict[str, Any],
    *,
    channels: int,
    resolution: int,
    num_classes: int,
    class_names: list[str] | None,
    ema: bool,
    recipe_toml: str,
    step: int,
    label_prior: list[float] | None = None,
    standing_stats: dict[str, int] | None = None,
    native_crop: list[int] | None = None,
    input: dict[str, Any] | None = None,
) -> dict[str, Any]:
    output = (
        {"kind": "image", "channels": channels, "resolution": resolution, "range": [-1.0, 1.0]}
        if resolution
        else {"kind": "points", "channels": channels, "resolution": 0, "range": None}
    )
    if native_crop:  # [top, left, height, width] of the data's own images (padded in training)
        output["native_crop"] = list(native_crop)
    return {
        "format_version": FORMAT_VERSION,
        "generator": {
            "name": entry.name,
            "kwargs": kwargs,
            "plugin": entry.plugin,
            "distribution": entry.distribution,
            "version": entry.version,
        },
        "latent": {
            "shape": list(latent_shape(generator)),
            "prior": getattr(generator, "latent_prior", "normal"),
        },
        "output": output,
        # An input-taking generator's input: the registered input that makes it from an
        # image ({name, kwargs, plugin, distribution, version}) and its channels and
        # resolution; None for G(z, y).
        "input": input,
        "num_classes": num_classes,
        "class_names": class_names,
        # Clusters (data.clusters): each one's share of the data, what sampling draws them
        # with. None for classes, which are drawn uniformly unless chosen.
        "label_prior": label_prior,
        "ema": ema,
        # Batch-norm statistics re-estimated for the EMA's weights ({"batches", "batch_size"}),
        # or None: the running statistics as training left them.
        "standing_stats": standing_stats,
        "supports_truncation": bool(getattr(generator, "supports_truncation", False)),
        "step": step,
        "ganforge_version": ganforge.__version__,
        "recipe": recipe_toml,
    }


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes: detects damage safetensors cannot."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def metadata_digest(meta: dict[str, Any]) -> str:
    """The SHA-256 of the metadata's other keys, canonically serialised."""
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_export(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write CPU ``tensors`` with ``metadata`` (plus the digests of both) as one file,
    atomically."""
    metadata = {**metadata, "tensors_sha256": tensors_digest(tensors)}
    metadata["metadata_sha256"] = metadata_digest(metadata)
    header = {METADATA_KEY: json.dumps(metadata)}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=header))


def export_generator(path: Path, generator: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Write the generator's parameters and buffers with ``metadata``, atomically."""
    return write_export(path, cpu_tensors(generator.state_dict()), metadata)


def export_checkpoint(checkpoint: Checkpoint, out: Path, *, ema: bool = True) -> Path:
    """Export a checkpoint's generator (its EMA when it has one and ``ema``) to ``out``.

    An EMA the run sampled with standing batch-norm statistics (``ema.standing_stats``) gets
    them here too, computed the same way: the export equals the one the run would write.
    """
    models = checkpoint.tensors("models")
    averaged = strip_prefix(models, "ema.")
    use_ema = ema and bool(averaged)
    tensors = averaged if use_ema else strip_prefix(models, "generator.")
    metadata = {**checkpoint.state["export"], "ema": use_ema, "step": checkpoint.step}
    standing = metadata.get("standing_stats") if use_ema else None
    metadata["standing_stats"] = standing
    if standing:
        info = GeneratorInfo.from_metadata(metadata)
        generator = build_generator(tensors, info, checkpoint.path)
        latents = partial(latents_from, info)
        standing_statistics(
            generator,
            lambda n, rng: draw_inputs(n, info.num_classes, info.label_prior, latents, rng),
            **standing,
        )
        tensors = cpu_tensors(generator.state_dict())
    return write_export(out, tensors, metadata)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class GeneratorInfo:
    """What an export says about its generator: how to rebuild it, and how to sample it."""

    name: str
    kwargs: dict[str, Any]
    distribution: str | None
    version: str | None
    latent_shape: tuple[int, ...]
    latent_prior: str
    output: str  # "image" (B×C×H×W in ``value_range``) or "points" (B×D)
    channels: int
    resolution: int
    num_classes: int
    class_names: list[str] | None
    label_prior: list[float] | None  # self-conditioned generators: the clusters' shares
    ema: bool
    step: int
    supports_truncation: bool
    metadata: dict[str, Any]  # everything, including the resolved recipe
    # [top, left, height, width] of the data's own images within the output (a padded data
    # set, e.g. 28×28 Fashion-MNIST trained at 32), or None: the whole output
    native_crop: tuple[int, int, int, int] | None = None
    # An input-taking generator's input (``export_metadata``), or None
    input: dict[str, Any] | None = None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> GeneratorInfo:
        generator, latent, output = meta["generator"], meta["latent"], meta["output"]
        return cls(
            name=generator["name"],
            kwargs=dict(generator["kwargs"]),
            distribution=generator.get("distribution"),
            version=generator.get("version"),
            latent_shape=tuple(int(d) for d in latent["shape"]),
            latent_prior=latent["prior"],
            output=output["kind"],
            channels=int(output["channels"]),
            resolution=int(output["resolution"]),
            num_classes=int(meta["num_classes"]),
            class_names=meta.get("class_names"),
            label_prior=_label_prior(meta.get("label_prior"), int(meta["num_classes"])),
            ema=bool(meta["ema"]),
            step=int(meta["step"]),
            supports_truncation=meta.get("supports_truncation", False) is True,
            metadata=meta,
            native_crop=_native_crop(output.get("native_crop"), int(output["resolution"])),
            input=_input(meta.get("input")),
        )


def _native_crop(crop, resolution: int) -> tuple[int, int, int, int] | None:
    if crop is None:
        return None
    top, left, height, width = (int(v) for v in crop)
    if (
        min(top, left) < 0
        or height < 1
        or width < 1
        or max(top + height, left + width) > resolution
    ):
        raise ValueError(f"output.native_crop: a region within {resolution}×{resolution}")
    return top, left, height, width


def _input(record) -> dict[str, Any] | None:
    if record is None:
        return None
    if not isinstance(record.get("name"), str) or not isinstance(record.get("kwargs"), dict):
        raise ValueError("input: a name and options")
    channels, resolution = int(record["channels"]), int(record["resolution"])
    if not (1 <= channels <= MAX_CHANNELS and 1 <= resolution <= MAX_RESOLUTION):
        raise ValueError(f"input: {channels} channels at {resolution} px")
    return {**record, "channels": channels, "resolution": resolution}


def _label_prior(prior, num_classes: int) -> list[float] | None:
    if prior is None:
        return None
    values = [float(p) for p in prior]
    finite = all(math.isfinite(v) and v >= 0 for v in values)
    if len(values) != num_classes or not finite or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"label_prior: {num_classes} shares summing to 1")
    return values


class ExportError(GanforgeError):
    """A file that is not a usable ganforge export."""


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], GeneratorInfo]:
    """The tensors and metadata of an export, verified; never unpickles."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path} does not exist")
    if path.is_dir():
        raise ExportError(f"{path} is a folder, not an export")
    if not path.is_file():  # a FIFO, a device such as /dev/zero, a socket
        raise ExportError(f"{path} is not a regular file, not an export")
    if not os.access(path, os.R_OK):
        raise ExportError(f"{path} cannot be read: permission denied")
    try:
        with safe_open(str(path), framework="pt") as f:  # one read: header and tensors
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except SafetensorError as err:
        raise ExportError(f"{path} is not a safetensors file, or is truncated: {err}") from None
    if METADATA_KEY not in header:
        raise ExportError(f"{path} is a safetensors file but not a ganforge export (no metadata)")
    try:
        meta = json.loads(header[METADATA_KEY])
        version = meta["format_version"]
    except (json.JSONDecodeError, TypeError, KeyError, RecursionError) as err:
        raise ExportError(f"{path} has damaged ganforge metadata: {err}") from None
    if type(version) is not int:
        raise ExportError(f"{path} has damaged ganforge metadata: format_version {version!r}")
    if "metadata_sha256" in meta and meta["metadata_sha256"] != metadata_digest(meta):
        raise ExportError(f"{path} is damaged: its metadata does not match its checksum")
    if version > FORMAT_VERSION:
        raise ExportError(
            f"{path} uses export format {version}; this ganforge ({ganforge.__version__}) reads "
            f"up to {FORMAT_VERSION}: upgrade ganforge"
        )
    if meta.get("tensors_sha256") != tensors_digest(tensors):
        raise ExportError(f"{path} is damaged: its weights do not match their checksum")
    broken = [k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise ExportError(
            f"{path} holds weights that are not finite ({', '.join(broken[:3])}"
            f"{', ...' if len(broken) > 3 else ''}): the run it came from diverged; export an "
            "earlier checkpoint (ganforge export RUN/checkpoints/step_N)"
        )
    try:
        info = GeneratorInfo.from_metadata(meta)
        _check_metadata(info)
    except KeyError as err:
        raise ExportError(f"{path} has incomplete ganforge metadata: missing {err}") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise ExportError(f"{path} has damaged ganforge metadata: {err}") from None
    return tensors, info


#: Limits an export's metadata is checked against before anything is built from it.
MAX_LATENT_ELEMENTS, MAX_CLASSES, MAX_CHANNELS = 1 << 20, 100_000, 64


def _check_metadata(info: GeneratorInfo) -> None:
    """Types and ranges of what ``generate`` and ``eval`` act on (ValueError if not)."""
    shape = info.latent_shape
    problems = []
    no_noise = info.input is not None and shape == (0,)  # an input-taking G without noise
    if (
        not shape
        or (any(d < 1 for d in shape) and not no_noise)
        or (math.prod(shape) > MAX_LATENT_ELEMENTS)
    ):
        problems.append(f"latent shape {list(shape)}")
    if info.latent_prior not in ("normal", "uniform"):
        problems.append(f"latent prior {info.latent_prior!r}")
    if info.output not in ("image", "points"):
        problems.append(f"output kind {info.output!r}")
    if not 1 <= info.channels <= MAX_CHANNELS:
        problems.append(f"{info.channels} channels")
    if not (0 if info.output == "points" else 4) <= info.resolution <= MAX_RESOLUTION:
        problems.append(f"resolution {info.resolution}")
    if not 0 <= info.num_classes <= MAX_CLASSES:
        problems.append(f"{info.num_classes} classes")
    if info.step < 0:
        problems.append(f"step {info.step}")
    if not isinstance(info.name, str) or not isinstance(info.kwargs, dict):
        problems.append("the generator's name or options")
    if problems:
        raise ValueError(", ".join(problems) + " out of range")


def load_generator(
    path: str | Path,
    device: str | torch.device = "cpu",
    registry: Registry | Plugins | None = None,
    *,
    plugins: Plugins | None = None,
) -> tuple[nn.Module, GeneratorInfo]:
    """Rebuild an exported generator through the plugin registry, ready to sample.

    Returns the module (eval mode, no gradients, on ``device``) and its :class:`GeneratorInfo`
    (latent shape and prior, output format, classes). No recipe is needed. ``registry``
    defaults to the installed plugins'; a ``Plugins`` (positional, or ``plugins=``, as before
    the registry was the argument) gives its own.
    """
    registry = getattr(plugins or registry, "registry", plugins or registry)
    tensors, info = read_export(path)
    generator = build_generator(tensors, info, path, registry)
    return generator.to(device), info


def build_generator(
    tensors: dict[str, torch.Tensor],
    info: GeneratorInfo,
    path: str | Path,
    registry: Registry | None = None,
) -> nn.Module:
    """The generator ``info`` describes, through the plugin registry, with ``tensors`` loaded
    (eval mode, no gradients, on the CPU); ``path`` names the weights in messages."""
    registry = registry or Plugins().registry
    entry = registry.find("generator", info.name)
    provider = f"{info.distribution or 'an unnamed plugin'} {info.version or ''}".strip()
    if entry is None:
        plugin = info.metadata["generator"].get("plugin")
        if plugin and plugin in registry.blocked_names:
            raise ExportError(
                f"{path} needs generator {info.name!r} from {provider} (plugin {plugin!r}), "
                f"which is installed but blocked by {DISABLE_ENV}; remove {plugin!r} from it "
                "to load this export"
            )
        raise ExportError(
            f"{path} needs generator {info.name!r} from {provider}, which is not installed; "
            f"install it, e.g. pip install {info.distribution or '<plugin>'}"
        )
    core = {"resolution": info.resolution, "channels": info.channels}
    core["num_classes"] = info.num_classes
    if info.input is not None:
        core["input_channels"] = info.input["channels"]
        core["input_resolution"] = info.input["resolution"]
    installed = f"{entry.distribution or 'a plugin'} {entry.version or ''}".strip()
    try:
        generator = registry.build("generator", info.name, core, info.kwargs, nn.Module)
        load_module(generator, tensors, f"the weights in {path}")
    except (GanforgeError, TypeError, ValueError, MemoryError, RuntimeError) as err:
        reason = "; ".join(p for _, p in err.problems) if isinstance(err, RecipeError) else err
        raise ExportError(
            f"{path} was written with generator {info.name!r} of {provider}; the installed "
            f"{installed} cannot rebuild it: {reason}"
        ) from None
    if (
        info.version
        and entry.version
        and (info.distribution, info.version) != (entry.distribution, entry.version)
    ):
        warn(f"{path} was written with {provider}; loaded with {installed}")
    return generator.eval().requires_grad_(False)


def latents_from(info: GeneratorInfo, num: int, rng: torch.Generator) -> torch.Tensor:
    """``num`` latents from the export's prior, drawn from ``rng`` on the CPU."""
    probe = SimpleNamespace(latent_shape=info.latent_shape, latent_prior=info.latent_prior)
    return sample_latents(probe, num, rng)


def latents(info: GeneratorInfo, num: int, seed: int) -> torch.Tensor:
    """``num`` latents from the export's prior, drawn from ``seed`` on the CPU."""
    return latents_from(info, num, torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(
    generator: nn.Module,
    info: GeneratorInfo,
    num: int,
    seed: int = 0,
    *,
    labels: torch.Tensor | None = None,
    truncation: float | None = None,
) -> torch.Tensor:
    """``num`` samples from a loaded generator; the same seed gives the same samples.

    Conditional generators take ``labels`` (``num`` class indices). ``truncation`` (ψ) is passed
    to generators that declare ``supports_truncation``. Samples are the whole output, with any
    padding training added; ``ganforge.sampling.native(samples, info)`` cuts images to the
    data's own size (``info.native_crop``), as ``ganforge generate`` does.
    """
    return forward(generator, latents(info, num, seed), labels, truncation)


def forward(
    generator: nn.Module,
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    truncation: float | None = None,
) -> torch.Tensor:
    """The generator on given latents (and labels), moved to its device; ``truncation`` (ψ) is
    passed only when set (generators that declare ``supports_truncation`` take it)."""
    device = next(iter(generator.parameters()), torch.empty(0)).device
    y = None if labels is None else labels.to(device)
    extra = {} if truncation is None else {"truncation": truncation}
    return generator(z.to(device), y, **extra)
