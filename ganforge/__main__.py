"""`python -m ganforge RECIPE.toml` (and `accelerate launch -m ganforge RECIPE.toml`)."""

from ganforge.cli import console_main

console_main()
