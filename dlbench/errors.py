"""User-facing errors: each says what was wrong, where, and what would be right.

The CLI turns a :class:`UserError` into a one-paragraph message and exit code 2, without a
traceback. Anything else that escapes is a bug in dlbench or a plugin, and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


EXIT_TRY_AGAIN = 75  # EX_TEMPFAIL: the command may succeed when run again later (the same command resumes)


class UserError(Exception):
    """A mistake the user can fix: bad TOML, unknown plugin, wrong type, missing file."""


class ConfigError(UserError):
    """One or more problems in a study file, each naming the file and the key path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun} in the study file:\n{lines}")


class PluginError(UserError):
    """A plugin could not be loaded or registered (bad module, duplicate name)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"did you mean 'relu'? "`` when a close match exists, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def choose_one_of(name: str, choices: Iterable[str]) -> str:
    """Message tail for an unknown name: a suggestion and the allowed values."""
    choices = sorted(choices)
    return f"{did_you_mean(name, choices)}choose one of: {', '.join(choices)}"
