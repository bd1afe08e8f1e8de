"""What a check of the plugin contract says: an :class:`Outcome` (pass, fail, skip, or an optional
capability the component does not support), the :class:`Skip` a check raises when it does not
apply, the :class:`Unsupported` an optional capability's check raises when the component does not
offer it, and the :class:`Note` a passing check returns."""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, SKIP, UNSUPPORTED = "pass", "fail", "skip", "unsupported"
LABELS = {PASS: "PASS", FAIL: "FAIL", SKIP: "SKIP", UNSUPPORTED: "INFO"}


@dataclass(frozen=True)
class Outcome:
    """One check of one component: ``status`` pass, fail, skip or unsupported (an optional
    capability the component does not offer: not a failure), and what the check found."""

    component: str  # kind:name
    check: str
    status: str
    message: str = ""

    def __str__(self) -> str:
        label = LABELS.get(self.status, self.status.upper())
        return f"{label:<4}  {self.component}  {self.check}" + (f": {self.message}" if self.message else "")


class Skip(Exception):
    """A check that does not apply to this component (the message says why)."""


class Unsupported(Exception):
    """An optional capability the component does not offer (the message says what it would need and
    which study features it keeps from working with the component). Reported, never a failure."""

    def __str__(self) -> str:
        return f"not supported: {super().__str__()}"


class Note(str):
    """What a passing check found (a check returns a plain ``str`` only to fail)."""


def passed(note: str) -> Note:
    return Note(note)


def summary(outcomes: list[Outcome], components: int) -> str:
    """The last line of ``dlbench plugins check``: every outcome counted once, by status
    (``12 checks of 1 component: 8 passed, 0 failed, 1 skipped (not applicable), 3 not supported (optional)``)."""
    statuses = [o.status for o in outcomes]
    line = (f"{len(outcomes)} checks of {components} component{'s' if components != 1 else ''}: "
            f"{statuses.count(PASS)} passed, {statuses.count(FAIL)} failed, "
            f"{statuses.count(SKIP)} skipped (not applicable)")
    if UNSUPPORTED in statuses:
        line += f", {statuses.count(UNSUPPORTED)} not supported (optional)"
    return line
