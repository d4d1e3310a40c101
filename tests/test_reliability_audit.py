"""Nothing untrusted is executed: resume, export, generate and eval run end to end, through the
CLI, while every way to unpickle is made to fail (the ``no_unpickling`` fixture)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from conftest import tiny_tables
from ganforge.cli import main
from ganforge.recipe import dump_toml, validate

TOY = (
    "data={name='toy2d', dataset='8gaussians', size=256}",
    "generator={name='mlp', hidden=8}",
    "discriminator={name='mlp', hidden=8}",
    "train.batch_size=32",
)


class Payload:
    """What a malicious pickle would name: any importable callable."""


def test_the_audit_catches_every_way_to_unpickle(no_unpickling):
    data = pickle.dumps(Payload())  # dumping is harmless; loading would import and call
    attempts = [
        lambda: pickle.loads(data),
        lambda: pickle.load(io.BytesIO(data)),
        lambda: pickle.Unpickler(io.BytesIO(data)).load(),
        lambda: np.load(io.BytesIO(data), allow_pickle=True),
        # A subclass of the C unpickler made before the patch: caught by the audit hook.
        lambda: EarlyUnpickler(io.BytesIO(data)).load(),
    ]
    for attempt in attempts:
        with pytest.raises(AssertionError, match="unpickle"):
            attempt()
    assert no_unpickling == [f"{__name__}.Payload"]
    no_unpickling.clear()  # seen and expected: the fixture's teardown check stays for the rest


class EarlyUnpickler(pickle.Unpickler):
    pass


def test_resume_export_generate_and_eval_never_unpickle(
    tmp_path, capsys, no_unpickling, reliability_report
):
    recipe = tmp_path / "toy.toml"
    recipe.write_text(dump_toml(validate(tiny_tables(tmp_path, *TOY), None).tables))
    run = tmp_path / "run"
    commands = [
        [str(recipe), "train.steps=2", "train.checkpoint_every=1"],
        [str(recipe), "train.steps=3"],  # resumes
        ["export", str(run), "--out", "g.safetensors"],
        ["export", str(run / "checkpoints" / "step_000002"), "--out", "g2.safetensors"],
        ["generate", "g.safetensors", "--num", "16", "--out", "points.npy"],
        ["generate", "g.safetensors", "--num", "16", "--out", "points.png"],
        ["eval", "g.safetensors", "--data", str(recipe), "--num", "64", "--out", "r.json"],
    ]
    for argv in commands:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert "resumed from" in capsys.readouterr().out
    assert np.load("points.npy").shape == (16, 2)
    reliability_report["no unpickling"]["commands run with unpickling disabled"] += len(commands)
