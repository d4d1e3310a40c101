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


class TrainingStopped(Exception):
    """A run stopped before ``train.steps`` for a reason it explains: Ctrl-C or SIGTERM, or
    too many non-finite steps in a row. Not a mistake in the user's input, so it carries its
    own exit status (:data:`INTERRUPTED`, :data:`TERMINATED`, :data:`NON_FINITE`)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


#: Exit statuses of a stopped run: Ctrl-C (128 + SIGINT, as shells report it), SIGTERM (128 +
#: 15: a scheduler preempting the job), and a run that gave up after
#: ``train.max_skipped_in_a_row`` non-finite steps.
INTERRUPTED = 130
TERMINATED = 143
NON_FINITE = 3
#: Exit status of a process whose peers of a launch went away (died, stopped or stalled).
PEER_LOST = 4


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
