"""The time a study has left, from the measured wall time of its units of work: no I/O, no clock.

A unit of work is a trial alone or a stack of N trials trained together (``planning.Work``); the
units of one kind take about as long as each other. Once a unit of a kind has finished, the
mean of that kind's finished units times the units of that kind left, summed over the kinds and
divided by the workers, is the time left. Before a unit of every kind left has finished, it is
unknown (None), not a guess.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def unit_kind(size: int) -> str:
    """The kind of a unit of ``size`` trials: ``trial`` alone, else ``stack of N``."""
    return "trial" if size == 1 else f"stack of {size}"


@dataclass
class UnitTimes:
    """The wall times of the finished units, by kind."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def record(self, kind: str, seconds: float) -> None:
        self.seconds.setdefault(kind, []).append(seconds)

    def means(self) -> dict[str, float]:
        return {kind: sum(values) / len(values) for kind, values in self.seconds.items()}


def eta_seconds(means: dict[str, float], left: Counter | dict[str, int], workers: int) -> float | None:
    """Seconds left: each kind's mean wall time (``means``) times its units ``left`` (running or
    not started), summed, over ``workers``; None (unknown) while a kind with units left has no
    finished unit yet; 0 when nothing is left."""
    pending = {kind: n for kind, n in left.items() if n > 0}
    if any(kind not in means for kind in pending):
        return None
    return sum(means[kind] * n for kind, n in pending.items()) / max(workers, 1)


def duration(seconds: float | None) -> str:
    """``seconds`` as people read it: ``45s``, ``3m12s``, ``2h05m``; ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    whole = max(int(round(seconds)), 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
