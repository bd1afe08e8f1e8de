"""The time a study has left, from the planner's cost model and the measured speed of the units
done so far, by kind of unit: no I/O, no clock.

A unit of work is a trial alone or a stack of N trials trained together (``planning.Work``): its
*kind*. The planner gives each unit a relative cost (:func:`dlbench.planning.unit_cost`: its
training steps, greedy pretraining included, times its model's parameters), which says that a
depth-8 MLP takes longer than a depth-1 one, or 40 epochs longer than 20, but not how many
seconds either takes on this machine. The finished units of a kind say that: their wall time
over their cost is the kind's speed (seconds per unit of cost). The time left is each unit left
at its kind's speed (a running one less the time it has already run), summed and divided by the
workers, then stretched by the share of the workers' time spent between units so far (handing
them out, recording their runs). Before a unit of every kind left has finished, it is unknown
(None), not a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


def unit_kind(size: int) -> str:
    """The kind of a unit of ``size`` trials: ``trial`` alone, else ``stack of N``."""
    return "trial" if size == 1 else f"stack of {size}"


@dataclass(frozen=True)
class UnitLeft:
    """A unit not finished: its kind, its cost, and how long it has been running (0: not started)."""

    kind: str
    cost: float
    running_s: float = 0.0


@dataclass
class UnitTimes:
    """The wall times of the finished units and their costs, by kind."""

    seconds: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    trials: int = 0

    def record(self, kind: str, seconds: float, cost: float = 1.0, trials: int = 1) -> None:
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
        self.costs[kind] = self.costs.get(kind, 0.0) + cost
        self.trials += trials

    def speeds(self) -> dict[str, float]:
        """Seconds per unit of cost, by kind (the finished units' total time over their total cost)."""
        return {kind: self.seconds[kind] / cost for kind, cost in self.costs.items() if cost > 0}

    def per_trial(self) -> float | None:
        """The mean wall time of a trial over every finished unit (None before one finished)."""
        return sum(self.seconds.values()) / self.trials if self.trials else None


def eta_seconds(times: UnitTimes, left: Iterable[UnitLeft], workers: int, unplanned: int = 0,
                occupancy: float = 1.0) -> float | None:
    """Seconds left: each unit ``left`` at its kind's speed (:meth:`UnitTimes.speeds`, seconds per
    unit of cost), less what a running one has run already, and the ``unplanned`` trials (a
    search's rounds to come) at the mean time of a trial, summed, over the ``workers`` (or the
    units left, when fewer), over the ``occupancy`` (:func:`occupancy`); None (unknown) while a
    kind with units left, or a trial for the unplanned ones, has nothing finished to go by; 0 when
    nothing is left."""
    speeds, left, per_trial = times.speeds(), list(left), times.per_trial()
    if any(unit.kind not in speeds for unit in left) or (unplanned and per_trial is None):
        return None
    planned = sum(max(speeds[u.kind] * u.cost - u.running_s, 0.0) for u in left)
    at_once = max(min(workers, len(left) + unplanned), 1)
    return (planned + unplanned * (per_trial or 0.0)) / at_once / occupancy


def occupancy(busy_s: float, elapsed_s: float, workers: int) -> float:
    """The share of the workers' time spent inside units of work so far (``busy_s``: the finished
    units' wall times and the running ones' so far, over ``elapsed_s`` x ``workers``), between
    0.25 and 1. The rest (a unit handed out, its runs recorded, a worker waiting for a search's
    round) recurs as the study goes on: the time left stretches by the same ratio."""
    if busy_s <= 0 or elapsed_s <= 0:
        return 1.0
    return min(max(busy_s / (elapsed_s * max(workers, 1)), 0.25), 1.0)


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
