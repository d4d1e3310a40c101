"""Errors that mean "the user's input is wrong": the CLI prints them as one message, exit 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GanforgeError(Exception):
    """A mistake in what the user gave ganforge (recipe, path, plugin, file), not a bug."""


class PluginError(GanforgeError):
    """A plugin failed to load or registered something invalid."""


class DataError(GanforgeError):
    """A data source is missing, empty or malformed."""


class RecipeError(GanforgeError):
    """One or more problems in a recipe, each naming the TOML key it is about."""

    def __init__(self, problems: Iterable[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.problems)} problem(s){where}:"]
        lines += [
            f"  {key}: {message}" if key else f"  {message}" for key, message in self.problems
        ]
        super().__init__("\n".join(lines))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest choice, or "" when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""
