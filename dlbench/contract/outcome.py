"""What a check of the plugin contract says: an :class:`Outcome` (pass, fail or skip), the
:class:`Skip` a check raises when it does not apply, and the :class:`Note` a passing check returns."""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Outcome:
    """One check of one component: ``status`` pass, fail or skip, and what the check found."""

    component: str  # kind:name
    check: str
    status: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.status.upper():<4}  {self.component}  {self.check}" + (f": {self.message}" if self.message else "")


class Skip(Exception):
    """A check that does not apply to this component (the message says why)."""


class Note(str):
    """What a passing check found (a check returns a plain ``str`` only to fail)."""


def passed(note: str) -> Note:
    return Note(note)
