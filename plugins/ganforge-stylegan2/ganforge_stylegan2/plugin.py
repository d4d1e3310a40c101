"""The ``stylegan2`` plugin: what this package registers with ganforge.

Only new names: the ``stylegan2`` generator and discriminator, the ``path_length``
regularizer, and the recipe ``stylegan2:digits``.
"""

from __future__ import annotations

from pathlib import Path

from ganforge import hookimpl

from ganforge_stylegan2.discriminator import StyleGAN2Discriminator
from ganforge_stylegan2.generator import StyleGAN2Generator
from ganforge_stylegan2.path_length import PathLength

RECIPES = Path(__file__).parent / "recipes"


@hookimpl
def ganforge_register_generators(register):
    register("stylegan2", StyleGAN2Generator, conditional=True)


@hookimpl
def ganforge_register_discriminators(register):
    register("stylegan2", StyleGAN2Discriminator, conditional=True)


@hookimpl
def ganforge_register_regularizers(register):
    register("path_length", PathLength)


@hookimpl
def ganforge_register_recipes(register):
    register("digits", RECIPES / "digits.toml")
