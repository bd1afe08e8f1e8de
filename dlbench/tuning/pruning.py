"""Pruning a hopeless tuning trial at an epoch end, in the process that trains it.

The search computes a trial's rule when it hands the trial out, from the trials of the same
search that ended before (their objective at every epoch): the rule travels with the trial to
its worker, and the training loop asks it after each evaluated epoch. A rule made from what had
ended, not from what happens to be running, makes a pruned search as reproducible as an
unpruned one: re-running it (or resuming it) prunes the same trials at the same epochs.

* ``median`` (Optuna's MedianPruner): stop when the trial's best value so far is worse than the
  median of the earlier trials' values at the same epoch, from ``warmup_epochs`` on, once
  ``min_trials`` trials have ended.
* ``halving`` (asynchronous successive halving, as Optuna's SuccessiveHalvingPruner): at the
  rungs ``min_epochs * reduction**k``, go on only when among the best ``1/reduction`` of the
  values the trials reached there (this one's included).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PruneRule:
    metric: str  # the search's objective, a validation metric
    higher_is_better: bool
    name: str  # median, halving
    medians: dict[int, float] = field(default_factory=dict)  # median: epoch -> the earlier trials' median
    rungs: dict[int, tuple[float, ...]] = field(default_factory=dict)  # halving: epoch -> earlier values
    reduction: int = 3

    def stops(self, epoch: int, history: list[dict[str, float]]) -> bool:
        """Whether the trial, whose epochs 0..``epoch`` are ``history``, stops after this epoch."""
        values = [row[self.metric] for row in history if math.isfinite(row.get(self.metric, math.nan))]
        if not values or not math.isfinite(history[-1].get(self.metric, math.nan)):
            return False
        if self.name == "median":
            if epoch not in self.medians:
                return False
            best = max(values) if self.higher_is_better else min(values)
            return self._worse(best, self.medians[epoch])
        if epoch not in self.rungs:
            return False
        own = values[-1]
        competing = sorted([*self.rungs[epoch], own], reverse=self.higher_is_better)
        keep = max(1, len(competing) // self.reduction)
        return self._worse(own, competing[keep - 1])

    def _worse(self, value: float, than: float) -> bool:
        return value < than if self.higher_is_better else value > than


def prune_rule(pruning, metric: str, higher_is_better: bool, ended: list[list[float]], epochs: int) -> PruneRule:
    """The rule of a trial of ``epochs`` epochs, from the objective curves (value per epoch, from
    0) of the trials of its search and stage that ended before it was handed out."""
    options = pruning.options
    if pruning.name == "median":
        medians = {}
        if len(ended) >= options["min_trials"]:
            for epoch in range(max(1, options["warmup_epochs"]), epochs):  # not the last: it has ended then
                at = [curve[epoch] for curve in ended if epoch < len(curve) and math.isfinite(curve[epoch])]
                if len(at) >= options["min_trials"]:
                    medians[epoch] = statistics.median(at)
        return PruneRule(metric, higher_is_better, "median", medians=medians)
    rungs = {}
    epoch = options["min_epochs"]
    while epoch < epochs:
        rungs[epoch] = tuple(curve[epoch] for curve in ended if epoch < len(curve) and math.isfinite(curve[epoch]))
        epoch *= options["reduction"]
    return PruneRule(metric, higher_is_better, "halving", rungs=rungs, reduction=options["reduction"])
