"""The declared interface of every executor: a pool that trains the units of work of a study run.

Three pools implement it, siblings of one another: :class:`~dlbench.execution.inline.InlinePool`
(one unit after another in this process), :class:`~dlbench.execution.local.WorkerPool` (worker
processes over this machine's cores and GPUs) and :class:`~dlbench.execution.ray_pool.RayPool`
(Ray tasks on a cluster). The study run (``runner.py``) sees only this interface, as optuna's
study sees a ``BaseSampler`` and Hydra a ``Launcher``.

In every pool this process stays the one writer to the tracking store: the lifecycle events of
the trials (start, epoch end, diagnostics, checkpoint, end) reach the ``observers`` given to
:meth:`Pool.run` in this process, and a trial ends exactly once, through ``on_result``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from dlbench.execution.queue import WorkQueue
from dlbench.planning import Work
from dlbench.trial import Trial, TrialResult

Claim = Callable[[Work], "Work | None"]  # a unit as it is handed out -> what of it this process trains


class Pool(ABC):
    """Where the units of work train. Made (and started) before the study run opens the store,
    so that its start-up (imports, CUDA, the datasets) overlaps with the parent's; closed once."""

    jobs: int = 1  # units trained at once
    # what the units train on, when the pool decides it (a Ray cluster); None: the run's devices
    # (local workers each train on their own of ``--device``'s)
    device: torch.device | None = None
    in_process: bool = False  # True: units train in this process (its cores are busy while they do)

    @property
    @abstractmethod
    def description(self) -> str:
        """How the units run, for the study's first line ("in 4 worker processes"); may be empty."""

    @abstractmethod
    def prestart(self, works: list[Work]) -> list[Work]:
        """Hand out first units now, before the parent can record anything (only for a store known
        to be empty: nothing handed out here can have been skipped, resumed or claimed by another
        process); their events wait until :meth:`run`. Returns the units handed out."""

    @abstractmethod
    def run(self, queue: WorkQueue, observers: list, on_result: Callable[[Trial, TrialResult], None],
            claim: Claim = lambda work: work, stop: Callable[[], bool] = lambda: False) -> None:
        """Train every unit of ``queue``: call each observer's lifecycle hooks for every event (in
        the order given) and ``on_result(trial, result)`` once when a trial ends. A unit is trained
        as ``claim(unit)`` returns it (None: skip it, another process has it). Once ``stop()`` is
        true (--fail-fast after a failure) nothing new starts. On Ctrl-C every trial handed out
        and not ended ends as interrupted (its run KILLED, resumable), then it re-raises."""

    @abstractmethod
    def close(self, now: bool = False) -> None:
        """Stop the pool's processes (idempotent); ``now``: do not wait for busy ones (Ctrl-C)."""
