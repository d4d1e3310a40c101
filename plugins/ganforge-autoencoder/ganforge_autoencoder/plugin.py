"""The ``autoencoder`` plugin: what this package registers with ganforge.

Only new names: the ``autoencoder`` generator and the recipes ``autoencoder:fashion`` (L1, a
perceptual term and ganforge's ``patch`` critic with VQGAN's adaptive weight, switched on
after a warm-up) and ``autoencoder:fashion_rec`` (the same without the critic, the baseline it
is measured against).
"""

from __future__ import annotations

from pathlib import Path

from ganforge import hookimpl

from ganforge_autoencoder.networks import Autoencoder

RECIPES = Path(__file__).parent / "recipes"


@hookimpl
def ganforge_register_generators(register):
    register("autoencoder", Autoencoder)


@hookimpl
def ganforge_register_recipes(register):
    register("fashion", RECIPES / "fashion.toml")
    register("fashion_rec", RECIPES / "fashion_rec.toml")
