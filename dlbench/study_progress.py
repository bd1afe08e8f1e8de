"""The progress a running study publishes to its study run, for another terminal, another
machine or the MLflow UI to see (``dlbench status`` reads it back).

:class:`ProgressPublisher` follows the units of work of one process's part of a study (planned,
handed out, started, ended) and publishes a snapshot, :func:`snapshot` fields: the trials done,
their outcomes, the trials running, the time elapsed and the time left (``eta.py``: the units
left at the measured speed of their kind, by the planner's cost model), at each
trial's end and at most every :data:`PUBLISH_EVERY_S` seconds otherwise (an epoch's end checks the
clock, nothing more). Publishing is one write to the store (``publish(progress, line)``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from dlbench import hookimpl
from dlbench.eta import UnitLeft, UnitTimes, duration, eta_seconds, occupancy, unit_kind

PUBLISH_EVERY_S = 5.0
PROGRESS_MARK = "**Progress**"  # the first words of the progress line that starts the study run's description
OUTCOMES = ("finished", "diverged", "failed", "pruned")


def trials_done(progress: dict) -> str:
    """``12/40 trials done (10 finished, 1 diverged, 1 failed, 0 pruned), 2 running``."""
    counts = ", ".join(f"{progress.get(k, 0)} {k}" for k in OUTCOMES)
    return f"{progress['done']}/{progress['total']} trials done ({counts}), {progress['running']} running"


def progress_text(progress: dict) -> str:
    """``12/40 trials done (...), 2 running; elapsed 1m10s, ETA 2m05s``: the run's terminal in a
    log, the study run's description and ``dlbench status`` say it so."""
    return (f"{trials_done(progress)}; elapsed {duration(progress['elapsed_s'])}, "
            f"ETA {duration(progress['eta_s'])}")


def progress_line(progress: dict) -> str:
    """The progress as one Markdown line (the study run's description starts with it)."""
    updated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(progress["updated"]))
    return f"{PROGRESS_MARK}: {progress_text(progress)} (updated {updated})"


def strip_progress(note: str) -> str:
    """A study run's description without the progress line it starts with, if any."""
    return note.partition("\n\n")[2] if note.startswith(PROGRESS_MARK) else note


def unit_key(work) -> tuple[int, ...]:
    return tuple(t.index for t in work.members)


class ProgressPublisher:
    """Counts one process's trials and times its units of work; publishes the snapshot with
    ``publish(progress, line)``. ``study_totals``: each study's number of trials (for
    ``dlbench status``); ``workers``: the units trained at once; ``cost``: a unit's relative
    cost (``planning.unit_cost``; 1 each when not given)."""

    def __init__(self, study_totals: dict[str, int], workers: int, publish: Callable[[dict, str], None],
                 every_s: float = PUBLISH_EVERY_S, clock: Callable[[], float] = time.time,
                 cost: Callable[[object], float] = lambda work: 1.0):
        self.study_totals, self.workers, self.publish = dict(study_totals), workers, publish
        self.every_s, self.clock, self.cost = every_s, clock, cost
        self.total = sum(self.study_totals.values())
        self.outcomes: Counter = Counter()
        self.done = 0
        self.running: set[int] = set()  # trial indices started and not ended
        self.unit_of: dict[int, tuple[int, ...]] = {}  # trial index -> its unit's key
        self.members_left: dict[tuple[int, ...], set[int]] = {}
        self.units: dict[tuple[int, ...], tuple[str, float]] = {}  # the units not finished: (kind, cost)
        self.started: dict[tuple[int, ...], float] = {}
        self.busy_s = 0.0  # the wall time of the units ended here
        # trials in no unit of this process and not done: recorded here from an identical trial
        # once it ends, or trained by another process
        self.outside: set[int] = set()
        self.times = UnitTimes()
        self.start = clock()
        self.last = float("-inf")

    def planned(self, works, ended=(), twins=()) -> None:
        """The units this process means to train, the (trial, result) pairs ``ended`` already
        (found in the store, recorded from an identical trial), and the trials ``twins`` recorded
        from an identical trial once it ends; published at once."""
        self.start = self.clock()  # the units start now (their start events come from here on)
        self.outside.update(t.index for t in twins)
        for work in works:
            self._add(work)
        for _, result in ended:
            self._count(result)
        self.publish_now()

    def taken(self, work, unit) -> None:
        """``work`` was claimed as ``unit`` (fewer members, or None: none of it is this process's)."""
        key = unit_key(work)
        for index in self.members_left.pop(key, ()):
            self.unit_of.pop(index, None)
        self.units.pop(key, None)
        if unit is not None:
            self._add(unit)

    def elsewhere(self, trial) -> None:
        """Another process trains ``trial``: it ends there."""
        self.outside.add(trial.index)

    def never(self, count: int) -> None:
        """``count`` trials will not run (a search none of whose trials finished has no final ones)."""
        self.total -= count

    def _add(self, work) -> None:
        key = unit_key(work)
        self.units[key] = (unit_kind(len(work.members)), self.cost(work))
        self.members_left[key] = set(key)
        self.unit_of.update({index: key for index in key})

    def ended(self, trial, result) -> None:
        """A trial ended, trained here or found ended in the store: counted, its unit timed when
        it was the unit's last member to end; published."""
        now = self.clock()
        self.running.discard(trial.index)
        self.outside.discard(trial.index)
        self._count(result)
        key = self.unit_of.pop(trial.index, None)
        if key is not None:
            left = self.members_left[key]
            left.discard(trial.index)
            if not left:
                kind, cost = self.units.pop(key)
                del self.members_left[key]
                began = self.started.pop(key, None)
                if began is not None:
                    self.busy_s += now - began
                    if result.status not in ("interrupted", "failed"):
                        self.times.record(kind, now - began, cost, len(key))
        self.publish_now()

    def _count(self, result) -> None:
        if result.status != "interrupted":  # an interrupted trial trains again
            self.done += 1
            self.outcomes[result.status] += 1

    @hookimpl
    def dlbench_trial_start(self, trial, model, info) -> None:
        self.running.add(trial.index)
        key = self.unit_of.get(trial.index)
        if key is not None:
            self.started.setdefault(key, self.clock())

    @hookimpl
    def dlbench_epoch_end(self, trial, epoch: int, metrics: dict[str, float]) -> None:
        if self.clock() - self.last >= self.every_s:
            self.publish_now()

    def snapshot(self) -> dict:
        now = self.clock()
        left = [UnitLeft(kind, cost, now - self.started.get(key, now)) for key, (kind, cost) in self.units.items()]
        planned = sum(len(members) for members in self.members_left.values())
        unplanned = max(self.total - self.done - planned - len(self.outside), 0)  # a search's rounds to come
        busy = self.busy_s + sum(unit.running_s for unit in left)
        eta = eta_seconds(self.times, left, self.workers, unplanned, occupancy(busy, now - self.start, self.workers))
        return {"total": self.total, "done": self.done, **{k: self.outcomes[k] for k in OUTCOMES},
                "running": len(self.running), "elapsed_s": round(now - self.start, 1),
                "eta_s": None if eta is None else round(eta, 1), "updated": round(now, 1),
                "studies": self.study_totals}

    def publish_now(self) -> None:
        progress = self.snapshot()
        self.last = self.clock()
        self.publish(progress, progress_line(progress))
