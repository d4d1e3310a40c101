"""The ``superres`` plugin: what this package registers with ganforge.

Only new names: the ``unet`` generator and the recipes ``superres:fashion`` (L1 and
ganforge's ``patch`` critic, conditioned on the input) and ``superres:fashion_l1`` (the same
generator trained with L1 alone, the baseline it is measured against).
"""

from __future__ import annotations

from pathlib import Path

from ganforge import hookimpl

from ganforge_superres.networks import UNetGenerator

RECIPES = Path(__file__).parent / "recipes"


@hookimpl
def ganforge_register_generators(register):
    register("unet", UNetGenerator)


@hookimpl
def ganforge_register_recipes(register):
    register("fashion", RECIPES / "fashion.toml")
    register("fashion_l1", RECIPES / "fashion_l1.toml")
