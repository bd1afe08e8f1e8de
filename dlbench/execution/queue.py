"""The units of work of a study run, handed out one at a time to whichever pool runs them.

Most units are known when the run starts (the trials of the study file, stacked where they
can). A tuned level's search (``tuning/search.py``) adds its trials as it goes: a round of
tuning trials once the round before has ended, then the best values with the study's seeds.
Those come first when a slot frees up: the rest of the search waits on them.

A pool asks :meth:`WorkQueue.next` whenever it has a free slot and stops when nothing is
in flight and ``next`` has nothing: nothing can then make a search ready again.
"""

from __future__ import annotations

from dlbench.planning import Work


class WorkQueue:
    def __init__(self, works: list[Work], stacks, searches=(), on_new=lambda trials: None,
                 on_empty=lambda search: None):
        self._static = list(works)
        self._ready: list[Work] = []
        self._searches = {s.id: s for s in searches}
        self._stacks = stacks  # a round's trials -> units of work (``planning.plan`` with its settings)
        self._on_new, self._on_empty = on_new, on_empty  # trials a search made; a search with no final trials

    def next(self) -> Work | None:
        """The next unit to hand out, None when there is none now."""
        self._refill()
        if self._ready:
            return self._ready.pop(0)
        if self._static:
            return self._static.pop(0)
        return None

    def record(self, trial, result) -> None:
        """A trial ended (or was found ended in the store): its search, if any, takes the result."""
        if trial.tuning is not None and trial.tuning.search in self._searches:
            self._searches[trial.tuning.search].record(trial, result)

    def elsewhere(self, trial) -> None:
        """Another live process trains ``trial``: its search cannot go on in this one."""
        if trial.tuning is not None and trial.tuning.search in self._searches:
            self._searches[trial.tuning.search].busy_elsewhere(trial)

    def more(self) -> bool:
        """Whether anything may still be handed out (now, or once running trials end)."""
        return bool(self._ready or self._static) or any(
            s.finals is None and not s.blocked for s in self._searches.values())

    def clear(self) -> None:
        """Hand nothing more out (--fail-fast after a failure)."""
        self._static.clear()
        self._ready.clear()
        self._searches.clear()

    def _refill(self) -> None:
        for search in self._searches.values():
            had_finals = search.finals is not None
            trials = search.ready()
            if trials:
                self._on_new(trials)
                self._ready.extend(hand_out_order(self._stacks(trials)))
            elif not had_finals and search.finals == []:
                self._on_empty(search)


def hand_out_order(works: list[Work]) -> list[Work]:
    """The order workers take the units in: study by study, the studies with the most levels
    first (their reports, the largest, are drawn while the others train, and the last study's
    report, drawn after training, is a small one), the longest units first within a study (so
    no long unit is left for the end while the other workers idle). A stack holding trials of
    several studies goes with the largest of them."""
    levels: dict[str, set[str]] = {}
    for w in works:
        for t in w.members:
            levels.setdefault(t.study, set()).add(t.level)
    first_seen = {study: i for i, study in enumerate(levels)}

    def study(w: Work) -> str:  # a stack of several studies' trials goes with the largest of them
        return min((t.study for t in w.members), key=lambda s: (-len(levels[s]), first_seen[s]))

    return sorted(works, key=lambda w: (-len(levels[study(w)]), first_seen[study(w)], -w.cost))
