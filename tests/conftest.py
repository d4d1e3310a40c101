"""Shared fixtures: an isolated cache, tiny recipes, and a way to run them in-process."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganforge.plugins import Plugins
from ganforge.recipe import apply_overrides, validate
from ganforge.testing import TINY_RECIPE as TINY

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


#: A 2-step point-data run on the 8 Gaussians with eval at its end (overrides of the tiny recipe).
TOY_EVAL_RUN = (
    "data={name='toy2d', dataset='8gaussians', size=256}",
    "generator={name='mlp', hidden=16}",
    "discriminator={name='mlp', hidden=16}",
    "train.steps=2",
    "eval.every=2",
    "eval.num=64",
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test writes outside its tmp dir or sees a user's plugin blocklist."""
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GANFORGE_DISABLE_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def reliability_report():
    """Counts of what the reliability tests tried (``report[area][what] += n``), written as
    JSON to ``$GANFORGE_RELIABILITY_REPORT`` at the end of the session when it is set
    (``docs/reliability.md`` quotes them)."""
    target = os.environ.get("GANFORGE_RELIABILITY_REPORT")
    target = Path(target).resolve() if target else None
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    yield counts
    if target is not None:
        report = {area: dict(sorted(found.items())) for area, found in sorted(counts.items())}
        target.write_text(json.dumps(report, indent=2) + "\n")


#: ``pickle.find_class`` audit events (a global resolved while unpickling: the only way a
#: pickle runs code) seen while ``no_unpickling`` is active; None when it is not.
_UNPICKLED: list[str] | None = None


def _audit_unpickling(event: str, args: tuple) -> None:
    if event == "pickle.find_class" and _UNPICKLED is not None:
        _UNPICKLED.append(f"{args[0]}.{args[1]}")
        raise AssertionError(f"something tried to unpickle {args[0]}.{args[1]}")


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any attempt to unpickle fails the test; yields the globals it caught.

    ``pickle.load(s)``, ``torch.load`` and ``numpy.load(allow_pickle=True)`` raise, and so does
    creating a ``pickle.Unpickler`` (replaced here, after the libraries that subclass it at
    import time are imported, by a subclass that refuses). A class that subclassed the C
    unpickler earlier is caught by an audit hook on ``pickle.find_class``, which every pickle
    that would run code triggers; the events are recorded too, so an unpickling whose error a
    library swallowed still fails the test at teardown.
    """
    global _UNPICKLED
    import pickle

    import numpy as np
    import sklearn.cluster  # noqa: F401 - joblib subclasses the Unpickler at import (clusters)
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    class RefusingUnpickler(pickle.Unpickler):
        def __init__(self, *args, **kwargs):
            refuse()

    for name in ("load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    monkeypatch.setattr(pickle, "_Unpickler", RefusingUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    real_np_load = np.load

    def np_load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            refuse()
        return real_np_load(*args, allow_pickle=False, **kwargs)

    monkeypatch.setattr(np, "load", np_load)
    if not getattr(_audit_unpickling, "installed", False):
        sys.addaudithook(_audit_unpickling)  # process-wide and permanent: inert when None
        _audit_unpickling.installed = True
    _UNPICKLED = caught = []
    try:
        yield caught
    finally:
        _UNPICKLED = None
    assert not caught, f"something unpickled {caught}"


@pytest.fixture(scope="session")
def _trained_digits_classifier(tmp_path_factory):
    from ganforge_plugins.digits import keep_classifier, train_digits_classifier

    net, accuracy = train_digits_classifier()
    path = tmp_path_factory.mktemp("digits") / "digits-cnn-v1.safetensors"
    keep_classifier(path, net, accuracy)
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


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy machine threads only contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
