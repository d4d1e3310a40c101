"""Shared fixtures: an isolated cache, tiny recipes, and a way to run them in-process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ganforge.plugins import Plugins
from ganforge.recipe import apply_overrides, validate
from ganforge.testing import TINY_RECIPE as TINY

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test writes outside its tmp dir or sees a user's plugin blocklist."""
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GANFORGE_DISABLE_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any attempt to unpickle (``pickle.load(s)`` or ``torch.load``) fails the test.

    (``pickle.Unpickler`` itself stays: libraries subclass it at import time.)"""
    import pickle

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.fixture(scope="session")
def _trained_digits_classifier(tmp_path_factory):
    from ganforge_plugins.digits import train_digits_classifier

    net, accuracy = train_digits_classifier()
    path = tmp_path_factory.mktemp("digits") / "digits-cnn-v1.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path, accuracy


@pytest.fixture
def digits_classifier(_trained_digits_classifier, tmp_path):
    """The digits extractor's classifier, trained once per session, in this test's cache."""
    import shutil

    path, accuracy = _trained_digits_classifier
    (tmp_path / "cache" / "eval").mkdir(parents=True, exist_ok=True)
    shutil.copy(path, tmp_path / "cache" / "eval" / path.name)
    return accuracy


def run_command(args, tmp_path: Path, timeout=180, env=None) -> subprocess.CompletedProcess:
    """Run a command from the repository root as a user would, with an isolated cache."""
    env = {**os.environ, "GANFORGE_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def tiny_tables(tmp_path: Path, *overrides: str) -> dict:
    import copy

    tables = copy.deepcopy(TINY)
    tables["run"]["out_dir"] = str(tmp_path / "run")
    return apply_overrides(tables, list(overrides))


def make_trainer(tmp_path: Path, *overrides: str, extra=()):
    """A Trainer on the tiny recipe (plus overrides and extra plugins)."""
    from ganforge.trainer import Trainer

    plugins = Plugins(extra=extra)
    recipe = validate(tiny_tables(tmp_path, *overrides), plugins.registry)
    return Trainer(recipe, plugins)


@pytest.fixture
def tiny(tmp_path):
    """``tiny(*overrides, extra=())`` builds a Trainer on a 16 px synthetic recipe."""
    return lambda *overrides, extra=(): make_trainer(tmp_path, *overrides, extra=extra)
