"""Export and generation: one self-describing safetensors file, rebuilt through the registry
with no recipe; the same samples as in training; every bad file is one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import ganforge
from ganforge.cli import main
from ganforge.export import latents, read_export, write_export
from ganforge.plugins import Plugins
from ganforge.sampling import write_samples

# Every export in this module is read with unpickling disabled.
pytestmark = pytest.mark.usefixtures("no_unpickling")


def test_generate_gives_the_samples_of_the_in_training_generator(tmp_path, tiny):
    trainer = tiny("train.steps=3", "ema.decay=0.5")
    path = trainer.fit()
    generator, info = ganforge.load_generator(path)
    assert not generator.training and not any(p.requires_grad for p in generator.parameters())
    assert info.latent_shape == (8,) and info.latent_prior == "normal" and info.ema
    z = latents(info, 6, seed=3)
    assert torch.equal(
        ganforge.generate(generator, info, 6, seed=3), trainer.outputs.generate(z, None)
    )

    # The CLI writes the same samples, and the same seed gives the same files.
    for name in ("a", "b"):
        assert (
            main(["generate", str(path), "--num", "6", "--seed", "3", "--out", f"{name}.npy"]) == 0
        )
        assert (
            main(["generate", str(path), "--num", "6", "--seed", "3", "--out", f"{name}.png"]) == 0
        )
    assert np.array_equal(np.load("a.npy"), trainer.outputs.generate(z, None).numpy())
    assert np.array_equal(np.load("a.npy"), np.load("b.npy"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert main(["generate", str(path), "--num", "2", "--seed", "4", "--out", "c.npy"]) == 0
    assert not np.array_equal(np.load("c.npy"), np.load("a.npy")[:2])

    assert main(["generate", str(path), "--num", "3", "--out-dir", "each"]) == 0
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == [
        "sample_00000.png",
        "sample_00001.png",
        "sample_00002.png",
    ]


def test_export_cli_writes_ema_or_g_from_a_run_or_checkpoint(tiny):
    trainer = tiny("train.steps=2", "ema.decay=0.5")
    trainer.fit()
    assert main(["export", str(trainer.run_dir), "--out", "ema.safetensors"]) == 0
    checkpoint = trainer.run_dir / "checkpoints" / "step_000002"
    assert main(["export", str(checkpoint), "--out", "g.safetensors", "--no-ema"]) == 0
    for file, module, ema in (
        ("ema.safetensors", trainer.ema.module, True),
        ("g.safetensors", trainer.generator, False),
    ):
        tensors, info = read_export(file)
        assert info.ema is ema and info.step == 2
        assert all(torch.equal(v, tensors[k]) for k, v in module.state_dict().items())
    # The end of training writes the same file as `ganforge export RUN`.
    assert (
        load_file("ema.safetensors").keys()
        == load_file(str(trainer.run_dir / "generator.safetensors")).keys()
    )
    with (
        safe_open("ema.safetensors", "pt") as a,
        safe_open(str(trainer.run_dir / "generator.safetensors"), "pt") as b,
    ):
        assert json.loads(a.metadata()["ganforge"]) == json.loads(b.metadata()["ganforge"])


class TinyConditional(nn.Module):
    """A conditional generator that declares truncation (ψ scales the latent)."""

    supports_truncation = True

    def __init__(self, *, resolution, channels, num_classes):
        super().__init__()
        self.latent_shape, self.shape = (4,), (channels, resolution, resolution)
        self.embed = nn.Embedding(num_classes, 4)
        self.linear = nn.Linear(4, channels * resolution * resolution)

    def forward(self, z, y=None, truncation: float = 1.0):
        return torch.tanh(self.linear(z * truncation + self.embed(y))).view(-1, *self.shape)


class TinyConditionalCritic(nn.Module):
    def __init__(self, *, resolution, channels, num_classes):
        super().__init__()
        self.linear = nn.Linear(channels * resolution * resolution, 1)
        self.embed = nn.Embedding(num_classes, 1)

    def forward(self, x, y=None):
        return self.linear(x.flatten(1)).squeeze(1) + self.embed(y).squeeze(1)


class ConditionalPlugin:
    @ganforge.hookimpl
    def ganforge_register_generators(self, register):
        register("tinyc", TinyConditional, conditional=True)

    @ganforge.hookimpl
    def ganforge_register_discriminators(self, register):
        register("tinyc", TinyConditionalCritic, conditional=True)


def test_class_and_truncation_reach_generators_that_declare_them(tmp_path, tiny):
    extra = [("tinyc", ConditionalPlugin())]
    plugins = Plugins(extra=extra)
    trainer = tiny(
        "data.num_classes=3",
        "data.conditional=true",
        "generator.name=tinyc",
        "discriminator.name=tinyc",
        "train.steps=1",
        extra=extra,
    )
    path = trainer.fit()

    def sample(**kwargs):
        write_samples(path, num=4, seed=0, out="s.npy", plugins=plugins, **kwargs)
        return torch.from_numpy(np.load("s.npy"))

    z = latents(ganforge.load_generator(path, registry=plugins.registry)[1], 4, 0)
    every_class = sample()  # rows follow the classes, as in training grids
    assert torch.equal(every_class, trainer.outputs.generate(z, torch.tensor([0, 1, 2, 2])))
    assert torch.equal(
        sample(label="1"), trainer.outputs.generate(z, torch.ones(4, dtype=torch.long))
    )
    # Several classes (the CLI's repeated or comma-separated --class): a run of samples each.
    assert torch.equal(
        sample(label="2, 0"), trainer.outputs.generate(z, torch.tensor([2, 2, 0, 0]))
    )
    truncated = trainer.generator(z * 0.5, torch.ones(4, dtype=torch.long))
    assert torch.allclose(sample(label="1", truncation=0.5), truncated)
    with pytest.raises(ganforge.errors.GanforgeError, match="out of range 0..2"):
        sample(label="3")


@pytest.fixture
def export_file(tiny):
    return tiny("train.steps=1").fit()


def rewrite(path, out, change):
    """Copy an export with its metadata changed by ``change(meta)``."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["ganforge"])
    change(meta)
    return write_export(out, load_file(str(path)), meta)


def future_format(meta):
    meta["format_version"] = 99


def wider(meta):
    meta["generator"]["kwargs"]["width"] = 8
    meta["generator"]["version"] = "9.0"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, tmp: tmp / "missing.safetensors", "does not exist"),
        (lambda p, tmp: tmp, "is a folder"),
        (lambda p, tmp: _write(tmp / "x.safetensors", b"not a model"), "not a safetensors file"),
        (lambda p, tmp: _write(tmp / "x.safetensors", p.read_bytes()[:-100]), "truncated"),
        (lambda p, tmp: _flip_last_byte(p, tmp / "x.safetensors"), "do not match their checksum"),
        (lambda p, tmp: _plain_safetensors(tmp / "x.safetensors"), "not a ganforge export"),
        (lambda p, tmp: rewrite(p, tmp / "x.safetensors", future_format), "upgrade ganforge"),
        (lambda p, tmp: rewrite(p, tmp / "x.safetensors", wider), "9.0; the installed ganforge"),
    ],
    ids=["missing", "folder", "text", "truncated", "bitflip", "plain", "future", "incompatible"],
)
def test_bad_model_files_are_one_clear_error(make, message, export_file, tmp_path, capsys):
    bad = make(export_file, tmp_path)
    capsys.readouterr()
    assert main(["generate", str(bad), "--out", "x.png"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_blocked_generator_plugin_is_named(export_file, capsys, monkeypatch):
    monkeypatch.setenv("GANFORGE_DISABLE_PLUGINS", "dcgan")
    assert main(["generate", str(export_file), "--out", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "needs generator 'dcgan' from ganforge" in err
    assert "(plugin 'dcgan'), which is installed but blocked by GANFORGE_DISABLE_PLUGINS" in err


def test_a_generator_plugin_not_installed_is_named(export_file, capsys, tmp_path):
    def elsewhere(meta):
        meta["generator"].update(name="nosuch", plugin="nosuch", distribution="ganforge-nosuch")

    moved = rewrite(export_file, tmp_path / "x.safetensors", elsewhere)
    assert main(["generate", str(moved), "--out", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "needs generator 'nosuch' from ganforge-nosuch" in err and "not installed" in err
    assert "pip install ganforge-nosuch" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--truncation", "0.7"], "does not support --truncation"),
        (["--class", "1"], "no classes"),
        (["--num", "0"], "--num must be at least 1"),
        (["--out", "x.jpg"], "write a .png"),
        (["--device", "cuda:0"], "no CUDA device")
        if not torch.cuda.is_available()
        else (["--device", "bogus"], "--device 'bogus'"),
        (["--device", "meta"], "--device 'meta' cannot be used"),
    ],
)
def test_generate_option_mistakes_exit_2(args, message, export_file, capsys):
    argv = ["generate", str(export_file), *args]
    if "--out" not in args:
        argv += ["--out", "x.png"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_export_of_a_non_checkpoint_or_to_a_bad_path_is_one_clear_error(tiny, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", "x.safetensors"]) == 2
    assert "neither a run folder nor a checkpoint folder" in capsys.readouterr().err
    run_dir = tiny("train.steps=1").run_dir
    tiny("train.steps=1").fit()
    capsys.readouterr()
    for out in (str(tmp_path), str(run_dir / "generator.safetensors" / "x.safetensors")):
        assert main(["export", str(run_dir), "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ganforge: error:") and "Traceback" not in err


def _write(path, data):
    path.write_bytes(data)
    return path


def _flip_last_byte(source, out):
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF
    return _write(out, bytes(data))


def _plain_safetensors(path):
    save_file({"w": torch.zeros(2)}, str(path))
    return path
