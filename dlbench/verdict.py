"""The end-of-epoch verdict: after each evaluated epoch, does a trial train on, or end, and
with which status? One rule for a trial trained alone (``train.py``) and for each member of a
stack (``train_stack.py``).

The first that applies, in this order:

1. the training loss is not finite: the trial ends **diverged** (its regularizers do not see
   the epoch: ``Regularizer.epoch_end`` is not called);
2. every regularizer sees the epoch (``Regularizer.epoch_end``); then, from epoch 1 on (epoch 0
   is the initialized model), every regularizer is asked ``should_stop``: when one says so (early
   stopping), the trial ends **finished**;
3. from epoch 1 on, a tuning trial's pruning rule (``trial.prune``, ``tuning/pruning.py``) stops
   it: the trial ends **pruned**;
4. otherwise it trains on.
"""

from __future__ import annotations

import math
from typing import Callable

from dlbench.regularizer import Regularizer, overrides
from dlbench.trial import Trial

# the status a trial ends with, by the reason it ends
DIVERGED = "diverged"
STOPPED = "finished"  # a regularizer stopped it early (early stopping): a finished trial
PRUNED = "pruned"  # a tuning trial behind the others of its search


class StopRule:
    """The verdict for one trial, asked once per evaluated epoch (:meth:`verdict`)."""

    def __init__(self, trial: Trial, regularizers: list):
        self.prune = trial.prune
        self.regularizers = regularizers
        # whether a regularizer looks at the model at epoch ends (a stack then copies a member's
        # weights into its own model first: see ``verdict``'s ``sync``)
        self.sees_model = any(overrides(type(r), Regularizer, "epoch_end") for r in regularizers)

    def verdict(self, epoch: int, metrics: dict[str, float], history: list[dict[str, float]], model,
                sync: Callable[[], None] | None = None) -> str | None:
        """None: the trial trains on; else the status it ends with (:data:`DIVERGED`,
        :data:`STOPPED`, :data:`PRUNED`). ``metrics``: the epoch's, the last row of ``history``
        (epochs 0..``epoch``). ``sync`` (a stack member): called before the regularizers see
        ``model``, when one of them looks at it, to bring the member's weights into it."""
        if not math.isfinite(metrics["train_loss"]):
            return DIVERGED
        if sync is not None and self.sees_model:
            sync()
        for reg in self.regularizers:
            reg.epoch_end(model, epoch, metrics)
        if epoch == 0:
            return None
        if any([reg.should_stop(epoch, metrics) for reg in self.regularizers]):  # every one is asked
            return STOPPED
        if self.prune is not None and self.prune.stops(epoch, history):
            return PRUNED
        return None
