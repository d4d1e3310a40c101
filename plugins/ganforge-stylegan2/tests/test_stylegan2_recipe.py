"""The package as a user meets it: found through its entry point, listed, its recipe run by
name, its export sampled with truncation, and a clear message when the plugin is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ganforge.cli import main
from ganforge.recipe import load_recipe
from ganforge.trainer import read_metrics
from safetensors import safe_open

import ganforge_stylegan2

NAMES = {
    ("generator", "stylegan2"),
    ("discriminator", "stylegan2"),
    ("regularizer", "path_length"),
    ("recipe", "stylegan2:digits"),
}
# The shipped recipe at 16 px with tiny widths: the same components, seconds on a CPU.
SMALL = (
    "data.resolution=16",
    "train.batch_size=8",
    "train.log_every=1",
    "generator.z_dim=8",
    "generator.w_dim=8",
    "generator.mapping_layers=2",
    "generator.channel_base=64",
    "generator.channel_max=8",
    "discriminator.channel_base=64",
    "discriminator.channel_max=8",
)


def registered_by(registry, plugin: str) -> set[tuple[str, str]]:
    found = {
        (kind, name)
        for kind, entries in registry.entries.items()
        for name, entry in entries.items()
        if entry.plugin == plugin
    }
    return found | {("recipe", n) for n, r in registry.recipes.items() if r.plugin == plugin}


def test_the_plugin_is_found_through_its_entry_point_and_adds_only_new_names(make_plugins):
    plugins = make_plugins()
    info = plugins.info["stylegan2"]
    assert (info.distribution, info.version) == (
        "ganforge-stylegan2",
        ganforge_stylegan2.__version__,
    )
    assert registered_by(plugins.registry, "stylegan2") == NAMES
    without = make_plugins(blocked=["stylegan2"]).registry
    assert registered_by(without, "stylegan2") == set()
    # Blocking it removes exactly its names: it shadowed nothing.
    assert without.registered() == plugins.registry.registered() - {f"{k} {n}" for k, n in NAMES}


def test_ganforge_plugins_lists_it_with_its_recipe(ganforge_env, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"stylegan2  (ganforge-stylegan2 {ganforge_stylegan2.__version__})" in out
    assert "    recipe: stylegan2:digits" in out and "    regularizer: path_length" in out


def test_its_recipe_uses_bce_lazy_r1_and_path_length(make_plugins, ganforge_env, capsys):
    recipe = load_recipe("stylegan2:digits", (), make_plugins().registry)
    assert recipe.component("generator").name == recipe.component("discriminator").name
    assert recipe.component("loss").name == "bce"
    lazy = {name: every for name, every, _ in recipe.regularizers()}
    assert lazy == {"r1": 16, "path_length": 4}
    assert recipe.get("data.name") == "digits"
    text = Path(recipe.source).read_text(encoding="utf-8")
    assert text.startswith("# ") and "python -m ganforge stylegan2:digits\n" in text
    assert main(["validate", "stylegan2:digits"]) == 0 and capsys.readouterr().out == "ok\n"


def test_the_recipe_runs_by_name_and_its_export_samples_with_truncation(
    ganforge_env, tmp_path, capsys, monkeypatch
):
    run_dir = tmp_path / "sg2"
    assert main(["stylegan2:digits", *SMALL, "train.steps=2", f"run.out_dir={run_dir}"]) == 0
    first = read_metrics(run_dir)[0]  # step 0 applies every lazy regularizer
    assert first["reg/r1"] > 0 and first["reg/path_length"] > 0
    assert first["reg/path_length/mean"] > 0
    export = run_dir / "generator.safetensors"
    with safe_open(str(export), "pt") as f:
        meta = json.loads(f.metadata()["ganforge"])
    assert meta["generator"]["distribution"] == "ganforge-stylegan2"
    assert meta["supports_truncation"] and meta["ema"]

    def generate(*args: str) -> int:
        return main(["generate", str(export), "--num", "4", *args])

    assert generate("--truncation", "0.5", "--out", str(tmp_path / "half.npy")) == 0
    assert generate("--truncation", "0", "--out", str(tmp_path / "zero.npy")) == 0
    half, zero = np.load(tmp_path / "half.npy"), np.load(tmp_path / "zero.npy")
    assert half.shape == (4, 1, 16, 16) and np.abs(half).max() <= 1
    assert np.ptp(zero, axis=0).max() < 1e-6  # ψ = 0: the average image for every latent
    assert np.ptp(half, axis=0).max() > 1e-3

    capsys.readouterr()
    monkeypatch.setenv("GANFORGE_DISABLE_PLUGINS", "stylegan2")
    assert generate("--out", str(tmp_path / "x.png")) == 2
    err = capsys.readouterr().err
    assert (
        f"needs generator 'stylegan2' from ganforge-stylegan2 {ganforge_stylegan2.__version__} "
        "(plugin 'stylegan2'), which is installed but blocked by GANFORGE_DISABLE_PLUGINS" in err
    )
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["stylegan2:digits"]) == 2
    assert "no plugin registers that name" in capsys.readouterr().err


@pytest.mark.slow
def test_the_full_recipe_trains_on_the_digits(ganforge_env, tmp_path):
    run_dir = tmp_path / "full"
    assert main(["stylegan2:digits", "train.steps=200", f"run.out_dir={run_dir}"]) == 0
    logged = read_metrics(run_dir)
    assert logged[-1]["skipped_steps"] == 0
    assert all(np.isfinite(m["d_loss"]) and np.isfinite(m["g_loss"]) for m in logged)
