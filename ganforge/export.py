"""Generator export: one safetensors file, weights plus self-describing metadata.

The metadata (JSON under the ``ganforge`` key) says everything needed to rebuild and sample the
generator without the recipe file: the registry entry and its kwargs, the plugin distribution
that provides it, the latent shape and prior, the output format, classes, and the resolved
recipe. Nothing in the file is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import ganforge
from ganforge.components import latent_shape
from ganforge.registry import Entry
from ganforge.runfiles import atomic_write

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
) -> dict[str, Any]:
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
        "output": (
            {"kind": "image", "channels": channels, "resolution": resolution, "range": [-1.0, 1.0]}
            if resolution
            else {"kind": "points", "channels": channels, "resolution": 0, "range": None}
        ),
        "num_classes": num_classes,
        "class_names": class_names,
        "ema": ema,
        "supports_truncation": bool(getattr(generator, "supports_truncation", False)),
        "step": step,
        "ganforge_version": ganforge.__version__,
        "recipe": recipe_toml,
    }


def export_generator(path: Path, generator: torch.nn.Module, metadata: dict[str, Any]) -> Path:
    """Write the generator's parameters and buffers with ``metadata``, atomically."""
    # Cloned to plain CPU tensors: safetensors refuses shared storage (tied weights, views).
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in generator.state_dict().items()
    }
    header = {METADATA_KEY: json.dumps(metadata)}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=header))
