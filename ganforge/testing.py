"""Pytest fixtures for plugin authors, loaded automatically wherever ganforge is installed.

ganforge registers this module as a ``pytest11`` plugin, so a plugin package's tests use the
fixtures without importing anything::

    def test_my_loss_trains(make_plugins, tiny_recipe, run_recipe):
        plugins = make_plugins(("mine", my_plugin_module))
        run_dir = run_recipe(tiny_recipe, "loss.name=my_loss", steps=2, plugins=plugins)
        assert (run_dir / "generator.safetensors").is_file()

- ``make_plugins(*extra, blocked=())``: a fresh :class:`~ganforge.plugins.Plugins` with the
  installed plugins (entry points) plus ``(name, plugin)`` objects given directly;
- ``tiny_recipe``: the tables of a recipe that trains in about a second on a CPU (16-px
  synthetic images, a 4-wide DCGAN, ``bce``), a fresh copy for each test;
- ``fake_images(n, channels, resolution, num_classes, seed)``: a batch as the core hands it to
  models, float images in [-1, 1] and integer labels (None when unconditional);
- ``run_recipe(recipe, *overrides, steps=2, plugins=None)``: trains a recipe (tables, a file,
  or a plugin's ``PLUGIN:NAME``) for ``steps`` steps in the test's tmp dir and returns the run
  directory; calling it again with the same ``name`` resumes that run;
- ``ganforge_env``: what the others use to isolate a test: a cache in its tmp dir and no
  ``GANFORGE_DISABLE_PLUGINS`` / ``GANFORGE_TRACE_PLUGINS`` from the user's shell.

Nothing heavy is imported until a fixture is used: pytest loads this module in every session.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ganforge.plugins import DISABLE_ENV, TRACE_ENV, Plugins

if TYPE_CHECKING:
    import torch

#: A recipe that trains in about a second on a CPU (data, models and batch all tiny).
TINY_RECIPE: dict[str, Any] = {
    "run": {"name": "tiny", "seed": 0},
    "data": {"name": "synthetic", "resolution": 16, "channels": 3, "size": 32},
    "generator": {"name": "dcgan", "latent_dim": 8, "width": 4},
    "discriminator": {"name": "dcgan", "width": 4},
    "loss": {"name": "bce"},
    "train": {"steps": 2, "batch_size": 8, "log_every": 1, "sample_every": 1000, "sample_count": 4},
}


@pytest.fixture
def ganforge_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ganforge cache inside the test's tmp dir, and no plugin settings from the shell."""
    cache = tmp_path / "ganforge-cache"
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(cache))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.delenv(TRACE_ENV, raising=False)
    return cache


@pytest.fixture
def make_plugins(ganforge_env: Path) -> Callable[..., Plugins]:
    """``make_plugins(*extra, blocked=(), entry_points=True)``: a fresh plugin manager.

    ``extra`` are ``(name, plugin)`` pairs registered directly (a module or an object with
    ``@hookimpl`` methods), as a package's entry points would; ``blocked`` names plugins to
    leave out, as ``GANFORGE_DISABLE_PLUGINS`` does.
    """

    def make(
        *extra: tuple[str, object], blocked: Iterable[str] = (), entry_points: bool = True
    ) -> Plugins:
        return Plugins(entry_points_=entry_points, blocked=list(blocked), extra=extra)

    return make


@pytest.fixture
def tiny_recipe() -> dict[str, Any]:
    """The tables of :data:`TINY_RECIPE`, a copy the test may change."""
    return copy.deepcopy(TINY_RECIPE)


@pytest.fixture
def fake_images() -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """``fake_images(n=8, channels=3, resolution=16, num_classes=0, seed=0)``.

    Random uint8 pixels scaled to float32 in [-1, 1] as the core scales data, shaped
    ``(n, channels, resolution, resolution)``, and ``n`` labels in ``[0, num_classes)`` (None
    for 0). The same arguments give the same batch; the global RNG is not touched.
    """
    import torch

    def make(
        n: int = 8, channels: int = 3, resolution: int = 16, num_classes: int = 0, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rng = torch.Generator().manual_seed(seed)
        pixels = torch.randint(0, 256, (n, channels, resolution, resolution), generator=rng)
        images = pixels.float().div_(127.5).sub_(1)
        labels = torch.randint(0, num_classes, (n,), generator=rng) if num_classes else None
        return images, labels

    return make


@pytest.fixture
def run_recipe(ganforge_env: Path, tmp_path: Path) -> Callable[..., Path]:
    """``run_recipe(recipe, *overrides, steps=2, plugins=None, name="run") -> Path``.

    Trains ``recipe`` (a dict of tables, a TOML file, or a plugin's ``PLUGIN:NAME``) with the
    ``overrides`` (``"section.key=value"``) for ``steps`` steps, in process, into
    ``tmp_path/name``, and returns that run directory (``generator.safetensors``,
    ``metrics.jsonl``, ``checkpoints/``, ``samples/``). ``plugins`` defaults to the installed
    ones. A second call with the same ``name`` resumes the run, as the CLI would.
    """
    from ganforge.recipe import apply_overrides, load_recipe, validate
    from ganforge.trainer import Trainer

    def run(
        recipe: Mapping[str, Any] | str | Path,
        *overrides: str,
        steps: int = 2,
        plugins: Plugins | None = None,
        name: str = "run",
    ) -> Path:
        plugins = plugins or Plugins(blocked=[])
        forced = [*overrides, f"train.steps={steps}", f"run.out_dir={tmp_path / name}"]
        if isinstance(recipe, Mapping):
            tables = apply_overrides(copy.deepcopy(dict(recipe)), forced)
            validated = validate(tables, plugins.registry)
        else:
            validated = load_recipe(recipe, forced, plugins.registry)
        Trainer(validated, plugins).fit()
        return validated.run_dir

    return run
